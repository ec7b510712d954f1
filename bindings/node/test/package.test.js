'use strict'
const { test } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')

const relaybox = require('..')

test('every export of the package is declared in lib/relaybox.d.ts, and nothing else', () => {
  const types = fs.readFileSync(path.join(__dirname, '../lib/relaybox.d.ts'), 'utf8')
  const declared = [...types.matchAll(/^export declare (?:class|function|const) (\w+)/gm)].map((m) => m[1]).sort()
  assert.deepEqual(declared, Object.keys(relaybox).sort())
})

test('the package entry points exist as package.json names them', () => {
  const manifest = require('../package.json')
  assert.equal(manifest.name, 'relaybox')
  for (const file of [manifest.main, manifest.types, 'index.js', 'index.d.ts']) {
    assert.ok(fs.existsSync(path.join(__dirname, '..', file)), file)
  }
  assert.equal(typeof relaybox.version, 'string')
  assert.equal(relaybox.version, require('../index.js').nativeVersion())
})
