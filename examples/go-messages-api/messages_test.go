package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"
)

const messageCount = 100

func requiredEnv(t *testing.T, name string) string {
	t.Helper()
	value := os.Getenv(name)
	if value == "" {
		t.Fatalf("%s is not set: the test uses the real services; start them with "+
			"`dev/services start postgres kafka && eval \"$(dev/services env)\"`", name)
	}
	return value
}

// startApp runs the service against the real PostgreSQL and Kafka, with a
// table prefix, topic and group of its own, and an HTTP server on loopback.
func startApp(t *testing.T) (*App, *httptest.Server) {
	t.Helper()
	url := requiredEnv(t, "RELAYBOX_TEST_DATABASE_URL")
	kafka := requiredEnv(t, "RELAYBOX_KAFKA_BOOTSTRAP")
	conn, err := net.DialTimeout("tcp", strings.Split(kafka, ",")[0], 5*time.Second)
	if err != nil {
		t.Fatalf("no Kafka broker answers at %s: %v", kafka, err)
	}
	conn.Close()
	suffix := make([]byte, 5)
	_, _ = rand.Read(suffix)
	id := hex.EncodeToString(suffix)
	app, err := Start(Config{
		DatabaseURL:    url,
		KafkaBootstrap: kafka,
		TablePrefix:    "go_" + id + "_",
		Topic:          "go-messages-" + id,
		Group:          "go-messages-" + id,
	}, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	server := httptest.NewServer(app.Routes())
	t.Cleanup(func() {
		server.Close()
		// The relay and consumer use the tables until they stop: drop them after.
		if err := errors.Join(app.consumer.Stop(), app.relay.Stop()); err != nil {
			t.Errorf("stop: %v", err)
		}
		dropTables(t, app)
		app.pool.Close()
		if err := app.outbox.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return app, server
}

func dropTables(t *testing.T, app *App) {
	prefix := app.cfg.TablePrefix
	_, err := app.pool.Exec(context.Background(), fmt.Sprintf(`DO $$ DECLARE t text; BEGIN
		FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = current_schema()
		AND left(tablename, %d) = '%s'
		LOOP EXECUTE format('DROP TABLE %%I CASCADE', t); END LOOP; END $$`, len(prefix), prefix))
	if err != nil {
		t.Errorf("cleanup: %v", err)
	}
}

func post(t *testing.T, server *httptest.Server, body string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Post(server.URL+"/api/v1/create", "application/json", bytes.NewBufferString(body))
	if err != nil {
		t.Fatalf("POST: %v", err)
	}
	defer resp.Body.Close()
	var decoded map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&decoded); err != nil {
		t.Fatalf("POST response: %v", err)
	}
	return resp.StatusCode, decoded
}

func getMessages(t *testing.T, server *httptest.Server) []Message {
	t.Helper()
	resp, err := http.Get(server.URL + "/api/v1/getMessages")
	if err != nil {
		t.Fatalf("GET: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET status %d", resp.StatusCode)
	}
	var messages []Message
	if err := json.NewDecoder(resp.Body).Decode(&messages); err != nil {
		t.Fatalf("GET response: %v", err)
	}
	if messages == nil {
		t.Fatalf("GET returned null, not an array")
	}
	return messages
}

func TestHundredMessagesAreReceivedExactlyOnce(t *testing.T) {
	app, server := startApp(t)

	if got := getMessages(t, server); len(got) != 0 {
		t.Fatalf("a new service lists %d messages", len(got))
	}

	// The first message waits for what happens once per service: the relay
	// creates the topic and the consumer joins its Kafka group.
	warmUp := time.Now()
	if status, body := post(t, server, `{"message": "msg-0"}`); status != http.StatusCreated {
		t.Fatalf("POST msg-0: %d %v", status, body)
	}
	for getMessages(t, server)[0].Status != "received" {
		if time.Since(warmUp) > 60*time.Second {
			t.Fatalf("msg-0 not received after 60 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	startup := time.Since(warmUp)

	started := time.Now()
	for i := 1; i <= messageCount; i++ {
		status, body := post(t, server, fmt.Sprintf(`{"message": "msg-%d"}`, i))
		if status != http.StatusCreated || body["status"] != "idle" || body["message"] != fmt.Sprintf("msg-%d", i) {
			t.Fatalf("POST msg-%d: %d %v", i, status, body)
		}
	}
	lastPosted := time.Now()

	seen := map[string]bool{}
	var messages []Message
	deadline := time.Now().Add(60 * time.Second)
	for {
		messages = getMessages(t, server)
		received := 0
		for _, m := range messages {
			seen[m.Status] = true
			switch m.Status {
			case "received":
				received++
			case "idle", "send":
			default:
				t.Fatalf("message %d has status %q", m.ID, m.Status)
			}
		}
		if len(messages) != messageCount+1 {
			t.Fatalf("%d messages listed, want %d", len(messages), messageCount+1)
		}
		if received == messageCount+1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d messages received after 60 s", received, messageCount+1)
		}
		time.Sleep(10 * time.Millisecond)
	}
	allReceived := time.Since(started)
	observed := time.Since(lastPosted)

	for i, m := range messages {
		if m.Message != fmt.Sprintf("msg-%d", i) || m.EventID == nil || m.ReceivedAt == nil {
			t.Fatalf("message %d listed as %+v", i, m)
		}
	}
	// Give a redelivery, if any, the time to show.
	time.Sleep(500 * time.Millisecond)
	once, more, last, err := app.deliveries()
	if err != nil {
		t.Fatal(err)
	}
	if once != messageCount+1 || more != 0 {
		t.Fatalf("%d messages received exactly once and %d more than once, want %d and 0", once, more, messageCount+1)
	}
	stats, err := app.consumer.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if stats.Processed != messageCount+1 || stats.DeadLettered != 0 {
		t.Fatalf("consumer stats %+v", stats)
	}
	pending, err := app.outbox.PendingCount()
	if err != nil || pending != 0 {
		t.Fatalf("pending outbox rows: %d (%v)", pending, err)
	}
	fmt.Printf("go-messages-api: a first message received %s after service start (topic creation, "+
		"consumer group join); then %d messages created over HTTP and all received exactly once in %s; "+
		"the last one took %s from its insert to received (the poll after the last POST saw it after %s); "+
		"statuses seen while polling: %v\n",
		startup.Round(time.Millisecond), messageCount, allReceived.Round(time.Millisecond),
		last.Round(100*time.Microsecond), observed.Round(time.Millisecond), keys(seen))
}

func keys(m map[string]bool) []string {
	var out []string
	for _, s := range []string{"idle", "send", "received"} {
		if m[s] {
			out = append(out, s)
		}
	}
	return out
}

func TestBadRequestsStoreNothing(t *testing.T) {
	app, server := startApp(t)
	for _, body := range []string{
		`not json`,
		`{}`,
		`{"message": ""}`,
		`{"message": 5}`,
		`{"message": "x", "extra": 1}`,
		`{"message": "` + strings.Repeat("x", maxMessageLength+1) + `"}`,
	} {
		status, decoded := post(t, server, body)
		if status != http.StatusBadRequest || decoded["error"] == "" {
			t.Errorf("POST %.40q: %d %v", body, status, decoded)
		}
	}
	if got := getMessages(t, server); len(got) != 0 {
		t.Fatalf("bad requests stored %d messages", len(got))
	}
	if pending, err := app.outbox.PendingCount(); err != nil || pending != 0 {
		t.Fatalf("bad requests enqueued %d events (%v)", pending, err)
	}
}

func TestOpenAPIDocumentDescribesTheEndpoints(t *testing.T) {
	_, server := startApp(t)
	for _, path := range []string{"/openapi.json", "/api/v1/swagger/doc.json"} {
		resp, err := http.Get(server.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		var doc struct {
			OpenAPI string                    `json:"openapi"`
			Paths   map[string]map[string]any `json:"paths"`
		}
		err = json.NewDecoder(resp.Body).Decode(&doc)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if !strings.HasPrefix(doc.OpenAPI, "3.") || doc.Paths["/api/v1/create"]["post"] == nil ||
			doc.Paths["/api/v1/getMessages"]["get"] == nil {
			t.Fatalf("%s does not describe the API: %+v", path, doc)
		}
	}
	resp, err := http.Get(server.URL + "/api/v1/swagger/index.html")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") ||
		!bytes.Contains(page, []byte("SwaggerUIBundle")) || !bytes.Contains(page, []byte("/api/v1/swagger/doc.json")) {
		t.Fatalf("swagger/index.html: %d %s", resp.StatusCode, page)
	}
	resp, err = http.Get(server.URL + "/api/v1/create")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET /api/v1/create: %d", resp.StatusCode)
	}
}
