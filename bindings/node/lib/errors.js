'use strict'
/**
 * The errors relaybox throws. Every error of the Rust core arrives as a
 * subclass of {@link RelayboxError} with a stable `code`, `retryable` and,
 * where one message is concerned, `messageId`.
 * @module relaybox/errors
 */

/** Base class of every relaybox error. */
class RelayboxError extends Error {
  /**
   * @param {string} message human-readable description
   * @param {{code?: string, retryable?: boolean, messageId?: string | null}} [fields]
   */
  constructor (message, fields = {}) {
    super(message)
    this.name = new.target.name
    /** Stable machine-readable code, e.g. `"invalid_topic"`. */
    this.code = fields.code ?? 'internal'
    /** Whether the same call may succeed if tried again later. */
    this.retryable = fields.retryable ?? false
    /** Id of the message the error concerns, or `null`. */
    this.messageId = fields.messageId ?? null
  }
}

/** A message or parameter is invalid (topic, payload size, header, key, value). */
class ValidationError extends RelayboxError {}
/** A setting is missing, of the wrong type or out of range. */
class ConfigError extends RelayboxError {}
/** The outbox, transaction, relay or consumer was already closed. */
class ClosedError extends RelayboxError {}
/** The database schema is missing or newer than this version of relaybox. */
class SchemaError extends RelayboxError {}
/** The database failed; see `retryable`. */
class StoreError extends RelayboxError {}
/** The broker failed or refused a message; see `retryable`. */
class TransportError extends RelayboxError {}
/** A consumer handler failed. */
class HandlerError extends RelayboxError {}
/** An operation did not finish in time. */
class TimeoutError extends RelayboxError {}
/** Something that should exist does not (a dead letter, a topic). */
class NotFoundError extends RelayboxError {}
/** A bug inside relaybox (including a caught Rust panic); please report it. */
class InternalError extends RelayboxError {}

/**
 * Throw (or reject with) this in a consumer handler to send the message to
 * dead letters at once, without retries.
 */
class Reject extends Error {
  constructor (message) {
    super(message)
    this.name = 'Reject'
  }
}

/** Error class for each core error code. */
const CLASSES = {
  invalid_topic: ValidationError,
  payload_too_large: ValidationError,
  invalid_header: ValidationError,
  invalid_message: ValidationError,
  invalid_value: ValidationError,
  invalid_config: ConfigError,
  closed: ClosedError,
  schema: SchemaError,
  database: StoreError,
  transport: TransportError,
  handler: HandlerError,
  timeout: TimeoutError,
  not_found: NotFoundError,
  internal: InternalError
}

const MARKER = 'relaybox-error:'

/**
 * The error for a core error code.
 * @param {string} code
 * @param {string} message
 * @param {{retryable?: boolean, messageId?: string | null}} [fields]
 * @returns {RelayboxError}
 */
function errorFor (code, message, fields = {}) {
  const Class = CLASSES[code] ?? InternalError
  return new Class(message, { ...fields, code })
}

/**
 * The relaybox error an error of the native addon stands for; other errors
 * (a JavaScript TypeError, say) are returned unchanged.
 * @param {unknown} err
 * @returns {unknown}
 */
function fromNative (err) {
  if (!(err instanceof Error) || typeof err.message !== 'string') return err
  const at = err.message.indexOf(MARKER)
  if (at < 0) return err
  let fields
  try {
    fields = JSON.parse(err.message.slice(at + MARKER.length))
  } catch {
    return new InternalError(err.message)
  }
  return errorFor(fields.code, fields.message, fields)
}

module.exports = {
  RelayboxError,
  ValidationError,
  ConfigError,
  ClosedError,
  SchemaError,
  StoreError,
  TransportError,
  HandlerError,
  TimeoutError,
  NotFoundError,
  InternalError,
  Reject,
  CODES: Object.freeze(Object.keys(CLASSES)),
  errorFor,
  fromNative
}
