'use strict'
/**
 * The native addon (loaded by the napi-generated `index.js`) and helpers
 * that turn its errors into relaybox errors.
 * @module relaybox/native
 */

const { fromNative } = require('./errors')

const native = require('../index.js')

/**
 * Calls a native function that returns a Promise and awaits it; a native
 * error (thrown or rejected) becomes its relaybox error.
 * @template T
 * @param {() => Promise<T>} call
 * @returns {Promise<T>}
 */
async function settle (call) {
  try {
    return await call()
  } catch (err) {
    throw fromNative(err)
  }
}

/**
 * Calls a synchronous native function; a native error becomes its relaybox error.
 * @template T
 * @param {() => T} body
 * @returns {T}
 */
function sync (body) {
  try {
    return body()
  } catch (err) {
    throw fromNative(err)
  }
}

module.exports = { native, settle, sync }
