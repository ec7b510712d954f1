package relaybox

/*
#include <stdint.h>
#include "relaybox.h"

extern void relayboxGoLog(relaybox_log_record *record, void *user_data);

static void relaybox_go_log_trampoline(const relaybox_log_record *record, void *user_data) {
	relayboxGoLog((relaybox_log_record *)record, user_data);
}

static relaybox_status relaybox_go_set_log(int on, int level) {
	return relaybox_set_log_callback(on ? relaybox_go_log_trampoline : NULL, NULL, level);
}
*/
import "C"

import (
	"context"
	"encoding/json"
	"log/slog"
	"sort"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"
)

// LevelTrace is the slog level of the core's trace records.
const LevelTrace = slog.LevelDebug - 4

// logHandler is where the core's records go; nil when forwarding is off.
var logHandler atomic.Pointer[slog.Handler]

// SetLogHandler sends the core's log records at level and above to h (for
// example slog.Default().Handler()), replacing the handler set before; a
// nil h turns forwarding off, which is the default.
//
// Each record carries its message followed by its fields as text (as in
// "relaybox message dead-lettered id=... attempts=1 error=..."), the
// attributes "target" (the core's module, such as "relaybox::relay") and
// "thread", and each field as an attribute of its own. Records of the
// core's libraries (librdkafka) pass at slog.LevelWarn and above only.
//
// h.Handle runs on the library's own log thread, one record at a time, and
// should return quickly: the core never waits for it, and while it is slow
// further records are dropped and counted, then reported by a warning
// "relaybox log records dropped" with attribute "dropped".
func SetLogHandler(h slog.Handler, level slog.Level) error {
	if h == nil {
		logHandler.Store(nil)
		return call(func() C.relaybox_status { return C.relaybox_go_set_log(0, C.RELAYBOX_LOG_OFF) })
	}
	logHandler.Store(&h)
	return call(func() C.relaybox_status { return C.relaybox_go_set_log(1, C.int(cLevel(level))) })
}

// cLevel is the relaybox_log_level that lets through slog level and above.
func cLevel(level slog.Level) C.relaybox_log_level {
	switch {
	case level <= LevelTrace:
		return C.RELAYBOX_LOG_TRACE
	case level <= slog.LevelDebug:
		return C.RELAYBOX_LOG_DEBUG
	case level <= slog.LevelInfo:
		return C.RELAYBOX_LOG_INFO
	case level <= slog.LevelWarn:
		return C.RELAYBOX_LOG_WARN
	default:
		return C.RELAYBOX_LOG_ERROR
	}
}

// slogLevel is the slog level of a relaybox_log_level.
func slogLevel(level C.relaybox_log_level) slog.Level {
	switch level {
	case C.RELAYBOX_LOG_ERROR:
		return slog.LevelError
	case C.RELAYBOX_LOG_WARN:
		return slog.LevelWarn
	case C.RELAYBOX_LOG_INFO:
		return slog.LevelInfo
	case C.RELAYBOX_LOG_DEBUG:
		return slog.LevelDebug
	default:
		return LevelTrace
	}
}

//export relayboxGoLog
func relayboxGoLog(record *C.relaybox_log_record, _ unsafe.Pointer) {
	hp := logHandler.Load()
	if hp == nil {
		return
	}
	h := *hp
	level := slogLevel(record.level)
	ctx := context.Background()
	if !h.Enabled(ctx, level) {
		return
	}
	r := slog.NewRecord(time.UnixMicro(int64(record.time_unix_micros)), level, C.GoString(record.text), 0)
	r.AddAttrs(
		slog.String("target", C.GoString(record.target)),
		slog.String("thread", C.GoString(record.thread)),
	)
	var fields map[string]any
	decoder := json.NewDecoder(strings.NewReader(C.GoString(record.fields_json)))
	decoder.UseNumber()
	if decoder.Decode(&fields) == nil {
		names := make([]string, 0, len(fields))
		for name := range fields {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			r.AddAttrs(slog.Any(name, fieldValue(fields[name])))
		}
	}
	_ = h.Handle(ctx, r)
}

// fieldValue turns a JSON number into an int64 or a float64.
func fieldValue(v any) any {
	n, ok := v.(json.Number)
	if !ok {
		return v
	}
	if i, err := n.Int64(); err == nil {
		return i
	}
	if f, err := n.Float64(); err == nil {
		return f
	}
	return n.String()
}
