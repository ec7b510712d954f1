'use strict'
/**
 * A delivered message as consumer handlers see it.
 * @module relaybox/message
 */

/** A message read from a broker or the database log (read-only). */
class Message {
  #canonical

  /**
   * @param {string} canonical the core's canonical JSON form of the message
   */
  constructor (canonical) {
    const envelope = JSON.parse(canonical)
    this.#canonical = canonical
    /** The message id (UUID v7): the idempotency key. */
    this.id = envelope.id
    /** The topic it was published to. */
    this.topic = envelope.topic
    /** The partition key, or `null`. */
    this.key = envelope.key ?? null
    /** The event type (may be empty). */
    this.type = envelope.type
    /** The payload bytes, untouched. */
    this.payload = Buffer.from(envelope.payload, 'base64')
    /** MIME type of the payload. */
    this.contentType = envelope.content_type
    /** String headers. */
    this.headers = envelope.headers ?? {}
    /** When the message was created. */
    this.createdAt = new Date(envelope.created_at)
    /** Earliest delivery time. */
    this.availableAt = new Date(envelope.available_at)
    Object.freeze(this)
  }

  /**
   * The message from its canonical JSON text.
   * @param {string} text
   * @returns {Message}
   */
  static fromCanonicalJSON (text) {
    return new Message(text)
  }

  /** The payload as UTF-8 text. */
  text () {
    return this.payload.toString('utf8')
  }

  /** The payload parsed as JSON. */
  json () {
    return JSON.parse(this.text())
  }

  /** The canonical JSON form shared by every relaybox language. */
  toCanonicalJSON () {
    return this.#canonical
  }
}

module.exports = { Message }
