// Command messages-api is the messages service of seed 003 on relaybox:
// POST /api/v1/create stores a message and its event in one transaction,
// relaybox relays the event to Kafka, and a relaybox consumer in the same
// process marks the message received exactly once. GET /api/v1/getMessages
// lists the messages with their status; GET /openapi.json describes the API.
//
// Environment: RELAYBOX_DATABASE_URL (PostgreSQL), RELAYBOX_KAFKA_BOOTSTRAP
// (default 127.0.0.1:9092), PORT (default 5555), MESSAGES_TABLE_PREFIX
// (default messages_), MESSAGES_TOPIC (default messages), MESSAGES_GROUP
// (default messages-api).
package main

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func env(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}

func main() {
	log := slog.New(slog.NewJSONHandler(os.Stdout, nil))
	url := os.Getenv("RELAYBOX_DATABASE_URL")
	if url == "" {
		log.Error("set RELAYBOX_DATABASE_URL to a PostgreSQL URL")
		os.Exit(2)
	}
	app, err := Start(Config{
		DatabaseURL:    url,
		KafkaBootstrap: env("RELAYBOX_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
		TablePrefix:    env("MESSAGES_TABLE_PREFIX", "messages_"),
		Topic:          env("MESSAGES_TOPIC", "messages"),
		Group:          env("MESSAGES_GROUP", "messages-api"),
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
