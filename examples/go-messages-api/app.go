package main

import (
	"context"
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

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	relaybox "github.com/relaybox/relaybox/bindings/go"
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
	// Concurrency is how many events the consumer handles at once (0: relaybox's default).
	Concurrency int
}

// App is the running service: the outbox, the application's pgx pool, the
// relay to Kafka, the consumer that marks messages received, and the HTTP
// handlers.
type App struct {
	cfg      Config
	log      *slog.Logger
	outbox   *relaybox.Outbox
	pool     *pgxpool.Pool
	relay    *relaybox.Relay
	consumer *relaybox.Consumer
	table    string
}

var identifier = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)

// Start opens the outbox (migrating relaybox's schema) and the pgx pool
// (creating the messages table), then starts the relay and the consumer.
func Start(cfg Config, log *slog.Logger) (*App, error) {
	if !identifier.MatchString(cfg.TablePrefix) {
		return nil, fmt.Errorf("table prefix %q must be lower-case letters, digits and _", cfg.TablePrefix)
	}
	outbox, err := relaybox.Open(cfg.DatabaseURL, relaybox.Options{"table_prefix": cfg.TablePrefix}, true)
	if err != nil {
		return nil, err
	}
	pool, err := pgxpool.New(context.Background(), cfg.DatabaseURL)
	if err != nil {
		_ = outbox.Close()
		return nil, err
	}
	app := &App{cfg: cfg, log: log, outbox: outbox, pool: pool, table: cfg.TablePrefix + "messages"}
	if err := app.createTable(); err != nil {
		app.closeStores()
		return nil, err
	}
	transport := map[string]any{"kafka": map[string]any{
		"bootstrap_servers": cfg.KafkaBootstrap,
		"create_topics":     true,
	}}
	if app.relay, err = outbox.StartRelay(transport, nil); err != nil {
		app.closeStores()
		return nil, err
	}
	consumerConfig := relaybox.ConsumerConfig{"group": cfg.Group}
	if cfg.Concurrency > 0 {
		consumerConfig["concurrency"] = cfg.Concurrency
	}
	app.consumer, err = outbox.ConsumePgx(pool, transport, cfg.Topic, consumerConfig, app.markReceived)
	if err != nil {
		_ = app.relay.Stop()
		app.closeStores()
		return nil, err
	}
	log.Info("messages service started", "topic", cfg.Topic, "table", app.table, "relaybox", relaybox.Version())
	return app, nil
}

func (a *App) closeStores() {
	a.pool.Close()
	_ = a.outbox.Close()
}

func (a *App) createTable() error {
	_, err := a.pool.Exec(context.Background(), fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s (
		id             bigserial PRIMARY KEY,
		message        text NOT NULL,
		event_id       uuid,
		created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
		received_at    timestamptz,
		received_count integer NOT NULL DEFAULT 0
	)`, a.table))
	return err
}

// Close stops the consumer and the relay and closes the pool and the outbox.
func (a *App) Close() error {
	err := errors.Join(a.consumer.Stop(), a.relay.Stop())
	a.pool.Close()
	return errors.Join(err, a.outbox.Close())
}

// event is the payload of a message's event: the message id, as in the seed.
type event struct {
	ID int64 `json:"id"`
}

// markReceived is the consumer handler: tx is a pgx transaction of the
// application's pool that already holds the event's inbox row, so the
// "received" mark commits with it and a redelivered event changes nothing.
func (a *App) markReceived(ctx context.Context, tx pgx.Tx, message *relaybox.Delivery) error {
	var ev event
	if err := message.Decode(&ev); err != nil {
		return &relaybox.Reject{Reason: "the event payload is not {\"id\": ...}: " + err.Error()}
	}
	tag, err := tx.Exec(ctx, fmt.Sprintf(`UPDATE %s SET received_count = received_count + 1,
		received_at = coalesce(received_at, clock_timestamp()) WHERE id = $1`, a.table), ev.ID)
	if err != nil {
		return err
	}
	if tag.RowsAffected() != 1 {
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
	mux.HandleFunc("GET /api/v1/swagger/index.html", serveSwaggerUI)
	return mux
}

// swaggerUI is the Swagger UI page of the API: the swagger-ui-dist
// scripts from a CDN, reading /api/v1/swagger/doc.json.
const swaggerUI = `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>messages-api</title>
<link rel="stylesheet" href="https://unpkg.com/swagger-ui-dist@5/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="https://unpkg.com/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({url: "/api/v1/swagger/doc.json", dom_id: "#swagger-ui"});
</script>
</body>
</html>
`

func serveSwaggerUI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write([]byte(swaggerUI))
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

// create stores the message row and its event in one pgx transaction.
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
	message, err := a.store(r.Context(), *body.Message)
	if err != nil {
		a.log.Error("could not store a message", "error", err)
		writeJSON(w, http.StatusInternalServerError, apiError{"the message could not be stored"})
		return
	}
	a.log.Info("successfully added to db message with id", "id", message.ID, "event", *message.EventID)
	writeJSON(w, http.StatusCreated, message)
}

// store writes the message row and its event in one pgx transaction.
func (a *App) store(ctx context.Context, text string) (Message, error) {
	tx, err := a.pool.Begin(ctx)
	if err != nil {
		return Message{}, err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var message Message
	var created time.Time
	err = tx.QueryRow(ctx, fmt.Sprintf(`INSERT INTO %s (message) VALUES ($1)
		RETURNING id, message, created_at`, a.table), text).Scan(&message.ID, &message.Message, &created)
	if err != nil {
		return Message{}, err
	}
	message.Status = "idle"
	message.CreatedAt = created.UTC().Format(time.RFC3339Nano)
	ids, err := a.outbox.Enqueue(ctx, tx, relaybox.Message{
		Topic:   a.cfg.Topic,
		Key:     strconv.FormatInt(message.ID, 10),
		Type:    "MessageCreated",
		Payload: event{ID: message.ID},
	})
	if err != nil {
		return Message{}, err
	}
	if _, err := tx.Exec(ctx, fmt.Sprintf(`UPDATE %s SET event_id = $1 WHERE id = $2`, a.table), ids[0], message.ID); err != nil {
		return Message{}, err
	}
	if err := tx.Commit(ctx); err != nil {
		return Message{}, err
	}
	message.EventID = &ids[0]
	return message, nil
}

// list returns every message with its status: received once the consumer
// marked it, send once the relay delivered its event to Kafka (the outbox row
// is gone), idle while the event waits in the outbox, failed if relaybox gave
// up delivering it (a dead letter).
func (a *App) list(w http.ResponseWriter, r *http.Request) {
	messages, err := a.messages(r.Context())
	if err != nil {
		a.log.Error("could not list messages", "error", err)
		writeJSON(w, http.StatusInternalServerError, apiError{"the messages could not be listed"})
		return
	}
	writeJSON(w, http.StatusOK, messages)
}

func (a *App) messages(ctx context.Context) ([]Message, error) {
	rows, err := a.pool.Query(ctx, fmt.Sprintf(`SELECT m.id, m.message, m.event_id::text, m.created_at, m.received_at,
		CASE WHEN m.received_count > 0 THEN 'received'
		     WHEN EXISTS (SELECT 1 FROM %[2]sdead_letters d WHERE d.id = m.event_id) THEN 'failed'
		     WHEN o.id IS NULL OR o.sent_at IS NOT NULL THEN 'send'
		     ELSE 'idle' END AS status
		FROM %[1]s m LEFT JOIN %[2]soutbox o ON o.id = m.event_id
		ORDER BY m.id`, a.table, a.cfg.TablePrefix))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	messages := []Message{}
	for rows.Next() {
		var m Message
		var created time.Time
		var received *time.Time
		if err := rows.Scan(&m.ID, &m.Message, &m.EventID, &created, &received, &m.Status); err != nil {
			return nil, err
		}
		m.CreatedAt = created.UTC().Format(time.RFC3339Nano)
		if received != nil {
			at := received.UTC().Format(time.RFC3339Nano)
			m.ReceivedAt = &at
		}
		messages = append(messages, m)
	}
	return messages, rows.Err()
}

// deliveries reports, for the test, how many messages were received exactly
// once, how many more than once, and the creation-to-receipt time of the
// last message created.
func (a *App) deliveries() (once, more int, last time.Duration, err error) {
	var lastMs float64
	err = a.pool.QueryRow(context.Background(), fmt.Sprintf(`SELECT
		count(*) FILTER (WHERE received_count = 1),
		count(*) FILTER (WHERE received_count > 1),
		coalesce((SELECT extract(epoch FROM received_at - created_at)::float8 * 1000
		          FROM %[1]s ORDER BY id DESC LIMIT 1), -1)
		FROM %[1]s`, a.table)).Scan(&once, &more, &lastMs)
	return once, more, time.Duration(lastMs * float64(time.Millisecond)), err
}
