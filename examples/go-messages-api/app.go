package main

import (
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"strconv"
	"time"
	"unicode/utf8"

	"relaybox.example/messages-api/relaybox"
)

//go:embed openapi.json
var openAPI []byte

// maxMessageLength bounds the text of one message, in characters.
const maxMessageLength = 10000

// Config is what the service needs to run.
type Config struct {
	// DatabaseURL is the PostgreSQL URL of the messages table and relaybox's tables.
	DatabaseURL string
	// KafkaBootstrap is the Kafka broker list the relay publishes to and the consumer reads.
	KafkaBootstrap string
	// TablePrefix prefixes relaybox's tables and the messages table.
	TablePrefix string
	// Topic is the Kafka topic of message events.
	Topic string
	// Group is the Kafka consumer group (and relaybox inbox group) of the consumer.
	Group string
}

// App is the running service: the outbox, the relay to Kafka, the consumer
// that marks messages received, and the HTTP handlers.
type App struct {
	cfg      Config
	log      *slog.Logger
	outbox   *relaybox.Outbox
	relay    *relaybox.Relay
	consumer *relaybox.Consumer
	table    string
}

var identifier = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)

// Start opens the outbox (migrating relaybox's schema and creating the
// messages table), then starts the relay and the consumer.
func Start(cfg Config, log *slog.Logger) (*App, error) {
	if !identifier.MatchString(cfg.TablePrefix) {
		return nil, fmt.Errorf("table prefix %q must be lower-case letters, digits and _", cfg.TablePrefix)
	}
	outbox, err := relaybox.Open(cfg.DatabaseURL, map[string]any{"table_prefix": cfg.TablePrefix}, true)
	if err != nil {
		return nil, err
	}
	app := &App{cfg: cfg, log: log, outbox: outbox, table: cfg.TablePrefix + "messages"}
	if err := app.createTable(); err != nil {
		_ = outbox.Close()
		return nil, err
	}
	transport := map[string]any{"kafka": map[string]any{
		"bootstrap_servers": cfg.KafkaBootstrap,
		"create_topics":     true,
	}}
	if app.relay, err = outbox.StartRelay(transport, nil); err != nil {
		_ = outbox.Close()
		return nil, err
	}
	app.consumer, err = outbox.StartConsumer(transport, cfg.Topic, map[string]any{"group": cfg.Group}, app.markReceived)
	if err != nil {
		_ = app.relay.Stop()
		_ = outbox.Close()
		return nil, err
	}
	log.Info("messages service started", "topic", cfg.Topic, "table", app.table, "relaybox", relaybox.Version())
	return app, nil
}

func (a *App) createTable() error {
	tx, err := a.outbox.Begin()
	if err != nil {
		return err
	}
	defer tx.Free()
	_, err = tx.Exec(fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s (
		id             bigserial PRIMARY KEY,
		message        text NOT NULL,
		event_id       uuid,
		created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
		received_at    timestamptz,
		received_count integer NOT NULL DEFAULT 0
	)`, a.table))
	if err != nil {
		return err
	}
	return tx.Commit()
}

// Close stops the consumer and the relay and closes the outbox.
func (a *App) Close() error {
	return errors.Join(a.consumer.Stop(), a.relay.Stop(), a.outbox.Close())
}

// event is the payload of a message's event: the message id, as in the seed.
type event struct {
	ID int64 `json:"id"`
}

// markReceived is the consumer handler: it marks the message received in
// the transaction that also records the event in relaybox's inbox, so a
// redelivered event changes nothing.
func (a *App) markReceived(message relaybox.Delivered, tx *relaybox.Tx) error {
	var ev event
	if err := json.Unmarshal(message.Payload, &ev); err != nil {
		return &relaybox.Reject{Reason: "the event payload is not {\"id\": ...}: " + err.Error()}
	}
	updated, err := tx.Exec(fmt.Sprintf(`UPDATE %s SET received_count = received_count + 1,
		received_at = coalesce(received_at, clock_timestamp()) WHERE id = $1`, a.table), ev.ID)
	if err != nil {
		return err
	}
	if updated != 1 {
		return &relaybox.Reject{Reason: fmt.Sprintf("no message %d", ev.ID)}
	}
	a.log.Info("changed status to received", "id", ev.ID, "event", message.ID)
	return nil
}

// Message is a message as the API shows it.
type Message struct {
	ID         int64   `json:"id"`
	Message    string  `json:"message"`
	Status     string  `json:"status"`
	EventID    *string `json:"event_id"`
	CreatedAt  string  `json:"created_at"`
	ReceivedAt *string `json:"received_at"`
}

// Routes is the HTTP API.
func (a *App) Routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v1/create", a.create)
	mux.HandleFunc("GET /api/v1/getMessages", a.list)
	mux.HandleFunc("GET /openapi.json", serveOpenAPI)
	mux.HandleFunc("GET /api/v1/swagger/doc.json", serveOpenAPI)
	return mux
}

func serveOpenAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(openAPI)
}

type apiError struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

// create stores the message row and its event in one relaybox transaction.
func (a *App) create(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Message *string `json:"message"`
	}
	decoder := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	decoder.DisallowUnknownFields()
	if err := decoder.Decode(&body); err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{"the body must be {\"message\": \"...\"}: " + err.Error()})
		return
	}
	if body.Message == nil || *body.Message == "" {
		writeJSON(w, http.StatusBadRequest, apiError{"`message` must be a non-empty string"})
		return
	}
	if utf8.RuneCountInString(*body.Message) > maxMessageLength {
		writeJSON(w, http.StatusBadRequest, apiError{"`message` is longer than " + strconv.Itoa(maxMessageLength) + " characters"})
		return
	}
	message, err := a.store(*body.Message)
	if err != nil {
		a.log.Error("could not store a message", "error", err)
		writeJSON(w, http.StatusInternalServerError, apiError{"the message could not be stored"})
		return
	}
	a.log.Info("successfully added to db message with id", "id", message.ID, "event", *message.EventID)
	writeJSON(w, http.StatusCreated, message)
}

func (a *App) store(text string) (Message, error) {
	tx, err := a.outbox.Begin()
	if err != nil {
		return Message{}, err
	}
	defer tx.Free()
	var rows []Message
	err = tx.Query(&rows, fmt.Sprintf(`INSERT INTO %s (message) VALUES ($1)
		RETURNING id, message, 'idle' AS status, created_at`, a.table), text)
	if err != nil {
		return Message{}, err
	}
	message := rows[0]
	eventID, err := tx.Enqueue(relaybox.Message{
		Topic:   a.cfg.Topic,
		Key:     strconv.FormatInt(message.ID, 10),
		Type:    "MessageCreated",
		Payload: event{ID: message.ID},
	})
	if err != nil {
		return Message{}, err
	}
	if _, err := tx.Exec(fmt.Sprintf(`UPDATE %s SET event_id = $1::uuid WHERE id = $2`, a.table), eventID, message.ID); err != nil {
		return Message{}, err
	}
	if err := tx.Commit(); err != nil {
		return Message{}, err
	}
	message.EventID = &eventID
	return message, nil
}

// list returns every message with its status: received once the consumer
// marked it, send once the relay delivered its event to Kafka (the outbox row
// is gone), idle while the event waits in the outbox, failed if relaybox gave
// up delivering it (a dead letter).
func (a *App) list(w http.ResponseWriter, _ *http.Request) {
	messages, err := a.messages()
	if err != nil {
		a.log.Error("could not list messages", "error", err)
		writeJSON(w, http.StatusInternalServerError, apiError{"the messages could not be listed"})
		return
	}
	writeJSON(w, http.StatusOK, messages)
}

func (a *App) messages() ([]Message, error) {
	tx, err := a.outbox.Begin()
	if err != nil {
		return nil, err
	}
	defer tx.Free()
	p := a.cfg.TablePrefix
	messages := []Message{}
	err = tx.Query(&messages, fmt.Sprintf(`SELECT m.id, m.message, m.event_id, m.created_at, m.received_at,
		CASE WHEN m.received_count > 0 THEN 'received'
		     WHEN EXISTS (SELECT 1 FROM %[2]sdead_letters d WHERE d.id = m.event_id) THEN 'failed'
		     WHEN o.id IS NULL OR o.sent_at IS NOT NULL THEN 'send'
		     ELSE 'idle' END AS status
		FROM %[1]s m LEFT JOIN %[2]soutbox o ON o.id = m.event_id
		ORDER BY m.id`, a.table, p))
	if err != nil {
		return nil, err
	}
	return messages, tx.Rollback()
}

// deliveries reports, for the test, how many messages were received exactly
// once, how many more than once, and the creation-to-receipt time of the
// last message created.
func (a *App) deliveries() (once, more int, last time.Duration, err error) {
	tx, err := a.outbox.Begin()
	if err != nil {
		return 0, 0, 0, err
	}
	defer tx.Free()
	var rows []struct {
		Once   int64   `json:"once"`
		More   int64   `json:"more"`
		LastMs float64 `json:"last_ms"`
	}
	err = tx.Query(&rows, fmt.Sprintf(`SELECT
		count(*) FILTER (WHERE received_count = 1) AS once,
		count(*) FILTER (WHERE received_count > 1) AS more,
		coalesce((SELECT extract(epoch FROM received_at - created_at)::float8 * 1000
		          FROM %[1]s ORDER BY id DESC LIMIT 1), -1) AS last_ms
		FROM %[1]s`, a.table))
	if err != nil {
		return 0, 0, 0, err
	}
	r := rows[0]
	return int(r.Once), int(r.More), time.Duration(r.LastMs * float64(time.Millisecond)), tx.Rollback()
}
