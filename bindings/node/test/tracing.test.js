'use strict'
/**
 * OpenTelemetry: one trace from the producer's request span to a span the
 * handler makes, recorded by the official SDK's in-memory exporter: the
 * `create` span at enqueue, whose context the message carries, and the
 * `process` span around the handler, over the database transport and
 * Kafka; and a message enqueued by a Python program (the relaybox Python
 * package with its OpenTelemetry SDK) handled here in the same trace.
 */
const { test } = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')
const fs = require('node:fs')
const { execFileSync } = require('node:child_process')

const api = require('@opentelemetry/api')
const { InMemorySpanExporter, SimpleSpanProcessor } = require('@opentelemetry/sdk-trace-base')
const { NodeTracerProvider } = require('@opentelemetry/sdk-trace-node')

const { relaybox, kafkaBootstrap, openOutbox, pgUrl, waitFor, unique } = require('./helpers')

const exporter = new InMemorySpanExporter()
new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }).register()
const shop = api.trace.getTracer('shop')

function spansOf (traceId) {
  return exporter.getFinishedSpans().filter((s) => s.spanContext().traceId === traceId)
}

function one (spans, name) {
  const found = spans.filter((s) => s.name === name)
  assert.equal(found.length, 1, `spans named ${name}: ${spans.map((s) => s.name)}`)
  return found[0]
}

function parentOf (span) {
  return span.parentSpanContext?.spanId ?? span.parentSpanId
}

/** A consumer whose handler does traced work of its own; resolves once it handled `id`. */
async function consumeTraced (t, outbox, topic, group, transport, id) {
  let handled = null
  const consumer = new relaybox.Consumer(outbox, topic, async (message) => {
    await shop.startActiveSpan('charge card', async (span) => {
      handled = message
      span.end()
    })
  }, { group, transport }).start()
  t.after(() => consumer.close())
  await waitFor('handled', () => handled !== null && handled.id === id, 60000)
  return handled
}

function assertProcessPath (spans, topic, id, createSpanId, system, group) {
  const processSpan = one(spans, `process ${topic}`)
  const work = one(spans, 'charge card')
  assert.equal(parentOf(processSpan), createSpanId)
  assert.equal(parentOf(work), processSpan.spanContext().spanId)
  assert.equal(processSpan.kind, api.SpanKind.CONSUMER)
  assert.equal(processSpan.attributes['messaging.system'], system)
  assert.equal(processSpan.attributes['messaging.destination.name'], topic)
  assert.equal(processSpan.attributes['messaging.message.id'], id)
  assert.equal(processSpan.attributes['messaging.consumer.group.name'], group)
}

async function enqueueInRequest (outbox, topic) {
  return shop.startActiveSpan('POST /orders', async (request) => {
    const id = await outbox.transaction((tx) => tx.enqueue({ topic, key: 'order-7', payload: { order: 7 } }))
    request.end()
    return { id, request: request.spanContext() }
  })
}

for (const [name, transportOf, system] of [
  ['the database transport', async () => undefined, 'relaybox.database'],
  ['Kafka', async () => relaybox.kafka({ bootstrapServers: await kafkaBootstrap(), createTopics: true }), 'kafka']
]) {
  test(`one trace from the request to the handler over ${name}`, async (t) => {
    const transport = await transportOf()
    const { outbox } = await openOutbox(t)
    const topic = unique('nd-traced')
    const { id, request } = await enqueueInRequest(outbox, topic)
    const relay = new relaybox.Relay(outbox, { transport }).start()
    t.after(() => relay.close())
    const handled = await consumeTraced(t, outbox, topic, 'nd-traced', transport, id)

    const spans = spansOf(request.traceId)
    const create = one(spans, `create ${topic}`)
    assert.equal(parentOf(create), request.spanId)
    assert.equal(create.kind, api.SpanKind.PRODUCER)
    assert.match(handled.headers.traceparent, new RegExp(`^00-${request.traceId}-${create.spanContext().spanId}-0[0-9a-f]$`))
    assertProcessPath(spans, topic, id, create.spanContext().spanId, system, 'nd-traced')
  })
}

const PYTHON_PRODUCER = `
import json, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
import relaybox

url, prefix, topic = sys.argv[1:4]
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
outbox = relaybox.Outbox(url, table_prefix=prefix)
with trace.get_tracer("checkout").start_as_current_span("POST /checkout"):
    with outbox.transaction() as tx:
        message_id = tx.enqueue(topic, {"order": 9})
create = next(s for s in exporter.get_finished_spans() if s.name == f"create {topic}")
print(json.dumps({
    "id": message_id,
    "trace_id": f"{create.context.trace_id:032x}",
    "create_span_id": f"{create.context.span_id:016x}",
}))
`

test('a message a Python producer enqueued is handled here in its trace', async (t) => {
  const python = path.resolve(__dirname, '../../../.venv/bin/python')
  assert.ok(fs.existsSync(python), `${python} is missing: dev/python-test creates it (dev/test runs it first)`)
  const { outbox, prefix } = await openOutbox(t)
  const topic = unique('nd-from-python')
  const produced = JSON.parse(execFileSync(python, ['-c', PYTHON_PRODUCER, pgUrl(), prefix, topic], { encoding: 'utf8' }))

  const relay = new relaybox.Relay(outbox).start()
  t.after(() => relay.close())
  await consumeTraced(t, outbox, topic, 'nd-from-python', undefined, produced.id)
  assertProcessPath(spansOf(produced.trace_id), topic, produced.id, produced.create_span_id, 'relaybox.database', 'nd-from-python')
})
