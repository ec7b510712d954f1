package relaybox

import (
	"encoding/base64"
	"encoding/json"
	"time"
)

// Message is an event to enqueue. Topic and one payload form are required:
// Payload (any JSON value, content type application/json; a Go string is
// sent as text), Data (raw bytes) or Text (UTF-8 text).
type Message struct {
	// Topic is the destination topic ([A-Za-z0-9._-], at most 249 characters).
	Topic string
	// Key orders messages: those of one key are delivered in order.
	Key string
	// Type is the event name, e.g. "order.created".
	Type string
	// Payload is a JSON value (marshalled with encoding/json).
	Payload any
	// Data is a raw byte payload; used instead of Payload when not nil.
	Data []byte
	// Text is a text payload; used instead of Payload when not "".
	Text string
	// ContentType overrides the content type the payload form implies.
	ContentType string
	// Headers are string headers carried with the message.
	Headers map[string]string
	// Delay holds the message back for this long after its creation.
	Delay time.Duration
	// AvailableAt holds the message back until this instant.
	AvailableAt time.Time
	// ID is the message id (a UUID); a new UUID v7 when "".
	ID string
}

// MarshalJSON encodes the message as the core's message spec.
func (m Message) MarshalJSON() ([]byte, error) {
	spec := map[string]any{"topic": m.Topic}
	switch {
	case m.Data != nil:
		spec["payload_base64"] = base64.StdEncoding.EncodeToString(m.Data)
	case m.Text != "":
		spec["payload_text"] = m.Text
	default:
		spec["payload"] = m.Payload
	}
	if m.Key != "" {
		spec["key"] = m.Key
	}
	if m.Type != "" {
		spec["type"] = m.Type
	}
	if m.ContentType != "" {
		spec["content_type"] = m.ContentType
	}
	if len(m.Headers) > 0 {
		spec["headers"] = m.Headers
	}
	if m.Delay > 0 {
		spec["delay"] = m.Delay.Milliseconds()
	}
	if !m.AvailableAt.IsZero() {
		spec["available_at"] = m.AvailableAt.UTC().Format(time.RFC3339Nano)
	}
	if m.ID != "" {
		spec["id"] = m.ID
	}
	return json.Marshal(spec)
}

// Delivery is a message as a consumer's handler receives it.
type Delivery struct {
	// ID is the message id (a UUID).
	ID string `json:"id"`
	// Topic is the topic it was sent to.
	Topic string `json:"topic"`
	// Key is its key, nil when it had none.
	Key *string `json:"key"`
	// Type is its event name ("" when none).
	Type string `json:"type"`
	// Payload is the payload's bytes (JSON text for a JSON payload).
	Payload []byte `json:"payload"`
	// ContentType is the payload's content type.
	ContentType string `json:"content_type"`
	// Headers are its headers.
	Headers map[string]string `json:"headers"`
	// CreatedAt is when it was enqueued.
	CreatedAt time.Time `json:"created_at"`
}

// Decode unmarshals a JSON payload into v.
func (d *Delivery) Decode(v any) error {
	return json.Unmarshal(d.Payload, v)
}
