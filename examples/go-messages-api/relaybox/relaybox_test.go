package relaybox

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
)

func open(t *testing.T) (*Outbox, string) {
	t.Helper()
	url := os.Getenv("RELAYBOX_TEST_DATABASE_URL")
	if url == "" {
		t.Fatal("RELAYBOX_TEST_DATABASE_URL is not set: the tests use the real PostgreSQL")
	}
	suffix := make([]byte, 5)
	_, _ = rand.Read(suffix)
	prefix := "gorb_" + hex.EncodeToString(suffix) + "_"
	outbox, err := Open(url, map[string]any{"table_prefix": prefix}, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		tx, err := outbox.Begin()
		if err == nil {
			_, err = tx.Exec(fmt.Sprintf(`DO $$ DECLARE t text; BEGIN
				FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = current_schema()
				AND left(tablename, %d) = '%s'
				LOOP EXECUTE format('DROP TABLE %%I CASCADE', t); END LOOP; END $$`, len(prefix), prefix))
			if err == nil {
				err = tx.Commit()
			}
			_ = tx.Free()
		}
		if err != nil {
			t.Errorf("cleanup: %v", err)
		}
		if err := outbox.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return outbox, prefix
}

func TestFailuresAreTypedErrors(t *testing.T) {
	_, err := Open("postgres://127.0.0.1:1/none", map[string]any{"table_prefx": "x_"}, false)
	var rbErr *Error
	if !errors.As(err, &rbErr) || rbErr.Status != StatusInvalidConfig || rbErr.Code != "invalid_config" ||
		!strings.Contains(rbErr.Message, "table_prefx") {
		t.Fatalf("bad options: %#v", err)
	}

	outbox, _ := open(t)
	tx, err := outbox.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Free()
	if _, err := tx.Enqueue(Message{Topic: "no spaces", Payload: 1}); err == nil ||
		!strings.Contains(err.Error(), "invalid_topic") {
		t.Fatalf("invalid topic: %v", err)
	}
	if _, err := tx.Exec("SELECT * FROM no_such_table"); !errors.As(err, &rbErr) || rbErr.Status != StatusDatabase {
		t.Fatalf("bad SQL: %#v", err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); !errors.As(err, &rbErr) || rbErr.Status != StatusClosed {
		t.Fatalf("commit after rollback: %#v", err)
	}
	if n, err := outbox.PendingCount(); err != nil || n != 0 {
		t.Fatalf("pending after failures: %d %v", n, err)
	}
}

// Goroutines move between OS threads; each failure must still report its own
// message, not another goroutine's.
func TestEachFailureKeepsItsOwnMessage(t *testing.T) {
	outbox, _ := open(t)
	var wg sync.WaitGroup
	failures := make(chan string, 64)
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				tx, err := outbox.Begin()
				if err != nil {
					failures <- err.Error()
					return
				}
				table := fmt.Sprintf("missing_%d_%d", g, i)
				_, err = tx.Exec("SELECT * FROM " + table)
				if err == nil || !strings.Contains(err.Error(), table) {
					failures <- fmt.Sprintf("goroutine %d call %d got %v", g, i, err)
				}
				_ = tx.Free()
			}
		}(g)
	}
	wg.Wait()
	close(failures)
	for f := range failures {
		t.Error(f)
	}
}
