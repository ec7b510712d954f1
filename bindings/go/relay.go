package relaybox

/*
#include <stdlib.h>
#include "relaybox.h"
*/
import "C"

// Transport names where a relay sends and a consumer reads: "database" (the
// log table in the outbox's own database), or an object such as
// {"kafka": {"bootstrap_servers": "127.0.0.1:9092"}}, as the core's
// TransportConfig takes it.
type Transport any

// Relay moves committed outbox rows to the transport, on relaybox's threads.
type Relay struct {
	ptr *C.relaybox_relay
}

// StartRelay starts relaying the outbox's committed messages to transport
// with the relay settings (nil for the defaults; e.g.
// map[string]any{"poll_interval": "100ms"}). Returns at once.
func (o *Outbox) StartRelay(transport Transport, config any) (*Relay, error) {
	t, err := configJSON("transport", transport)
	if err != nil {
		return nil, err
	}
	c, err := configJSON("relay config", config)
	if err != nil {
		return nil, err
	}
	o.mu.RLock()
	defer o.mu.RUnlock()
	ptr, err := o.handle()
	if err != nil {
		return nil, err
	}
	cTransport, cConfig := cstring(t), optional(c)
	defer free(cTransport)
	defer free(cConfig)
	r := &Relay{}
	err = call(func() C.relaybox_status {
		return C.relaybox_relay_start(ptr, cTransport, cConfig, &r.ptr)
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

// Stop finishes the batch in flight, stops, and releases the relay.
func (r *Relay) Stop() error {
	if r == nil || r.ptr == nil {
		return nil
	}
	ptr := r.ptr
	err := call(func() C.relaybox_status { return C.relaybox_relay_stop(ptr) })
	if freeErr := call(func() C.relaybox_status { return C.relaybox_relay_free(ptr) }); err == nil {
		err = freeErr
	}
	r.ptr = nil
	return err
}
