// Command messages-api is the messages service of seed 003 on relaybox:
// POST /api/v1/create stores a message and its event in one transaction,
// relaybox relays the event to Kafka, and a relaybox consumer in the same
// process marks the message received exactly once. GET /api/v1/getMessages
// lists the messages with their status; GET /openapi.json describes the API
// and GET /api/v1/swagger/index.html shows it in Swagger UI.
//
// Environment: RELAYBOX_DATABASE_URL (PostgreSQL; or, as the seed's
// compose file sets them, PG_USER and PG_PASSWORD with PG_HOST (default
// 127.0.0.1), PG_PORT (5432) and PG_DATABASE (postgres)),
// RELAYBOX_KAFKA_BOOTSTRAP or KAFKA_BROKER (default 127.0.0.1:9092), PORT
// (default 5555), MESSAGES_TABLE_PREFIX (default messages_), MESSAGES_TOPIC
// or KAFKA_TOPIC (default messages), MESSAGES_GROUP or KAFKA_GROUP_ID
// (default messages-api), BUFFER_SIZE (events handled at once; relaybox's
// default when unset).
package main

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

func env(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}

// databaseURL is RELAYBOX_DATABASE_URL, else the URL the seed's PG_*
// variables describe, else "".
func databaseURL() string {
	if dbURL := os.Getenv("RELAYBOX_DATABASE_URL"); dbURL != "" {
		return dbURL
	}
	user := os.Getenv("PG_USER")
	if user == "" {
		return ""
	}
	u := url.URL{
		Scheme: "postgres",
		User:   url.UserPassword(user, os.Getenv("PG_PASSWORD")),
		Host:   env("PG_HOST", "127.0.0.1") + ":" + env("PG_PORT", "5432"),
		Path:   "/" + env("PG_DATABASE", "postgres"),
	}
	return u.String()
}

func main() {
	log := slog.New(slog.NewJSONHandler(os.Stdout, nil))
	dbURL := databaseURL()
	if dbURL == "" {
		log.Error("set RELAYBOX_DATABASE_URL to a PostgreSQL URL (or PG_USER and PG_PASSWORD)")
		os.Exit(2)
	}
	concurrency := 0
	if size := os.Getenv("BUFFER_SIZE"); size != "" {
		n, err := strconv.Atoi(size)
		if err != nil || n < 1 {
			log.Error("BUFFER_SIZE must be a positive integer", "value", size)
			os.Exit(2)
		}
		concurrency = n
	}
	app, err := Start(Config{
		DatabaseURL:    dbURL,
		KafkaBootstrap: env("RELAYBOX_KAFKA_BOOTSTRAP", env("KAFKA_BROKER", "127.0.0.1:9092")),
		TablePrefix:    env("MESSAGES_TABLE_PREFIX", "messages_"),
		Topic:          env("MESSAGES_TOPIC", env("KAFKA_TOPIC", "messages")),
		Group:          env("MESSAGES_GROUP", env("KAFKA_GROUP_ID", "messages-api")),
		Concurrency:    concurrency,
	}, log)
	if err != nil {
		log.Error("could not start", "error", err)
		os.Exit(1)
	}
	server := &http.Server{
		Addr:              ":" + env("PORT", "5555"),
		Handler:           app.Routes(),
		ReadHeaderTimeout: 10 * time.Second,
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = server.Shutdown(shutdown)
	}()
	log.Info("listening", "addr", server.Addr)
	if err := server.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("server failed", "error", err)
	}
	if err := app.Close(); err != nil {
		log.Error("shutdown failed", "error", err)
		os.Exit(1)
	}
}
