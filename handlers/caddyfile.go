package handlers

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	for name, parse := range map[string]httpcaddyfile.UnmarshalHandlerFunc{
		"ipcbus_send":      func(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) { return unmarshal(h, new(Send)) },
		"ipcbus_broadcast": func(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) { return unmarshal(h, new(Broadcast)) },
		"ipcbus_poll":      func(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) { return unmarshal(h, new(Poll)) },
	} {
		httpcaddyfile.RegisterHandlerDirective(name, parse)
		httpcaddyfile.RegisterDirectiveOrder(name, httpcaddyfile.Before, "respond")
	}
}

type unmarshalHandler interface {
	caddyhttp.MiddlewareHandler
	caddyfile.Unmarshaler
}

func unmarshal(h httpcaddyfile.Helper, m unmarshalHandler) (caddyhttp.MiddlewareHandler, error) {
	return m, m.UnmarshalCaddyfile(h.Dispenser)
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	ipcbus_send [<matcher>] [<pid> [<name>]] {
//		pid  <pid>
//		name <name>
//	}
//
// Without pid or name, the request's "pid" and "name" query parameters
// give them. Placeholders are allowed in both.
func (h *Send) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	args := d.RemainingArgs()
	if len(args) > 2 {
		return d.Errf("ipcbus_send takes at most two arguments, <pid> and <name>; got %d", len(args))
	}
	if len(args) > 0 {
		h.PID = args[0]
	}
	if len(args) > 1 {
		h.Name = args[1]
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "pid":
			if !d.AllArgs(&h.PID) {
				return d.Errf("ipcbus_send pid needs exactly one value")
			}
		case "name":
			if !d.AllArgs(&h.Name) {
				return d.Errf("ipcbus_send name needs exactly one value")
			}
		default:
			return d.Errf("unknown ipcbus_send setting %q; the settings are pid and name", d.Val())
		}
	}
	return nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	ipcbus_broadcast [<matcher>] [<source> [<event>]] {
//		source <source>
//		event  <event>
//		unique <key>
//		alert  [<name>]
//	}
//
// Without source, event or unique, the request's query parameters of the
// same names give them. `alert` broadcasts an IPC alert (named by its
// argument, else the "name" query parameter) instead of posting an event.
// Placeholders are allowed everywhere.
func (h *Broadcast) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	args := d.RemainingArgs()
	if len(args) > 2 {
		return d.Errf("ipcbus_broadcast takes at most two arguments, <source> and <event>; got %d", len(args))
	}
	if len(args) > 0 {
		h.Source = args[0]
	}
	if len(args) > 1 {
		h.Event = args[1]
	}
	for d.NextBlock(0) {
		switch opt := d.Val(); opt {
		case "source", "event", "unique":
			var v string
			if !d.AllArgs(&v) {
				return d.Errf("ipcbus_broadcast %s needs exactly one value", opt)
			}
			*map[string]*string{"source": &h.Source, "event": &h.Event, "unique": &h.Unique}[opt] = v
		case "alert":
			h.Alert = true
			rest := d.RemainingArgs()
			if len(rest) > 1 {
				return d.Errf("ipcbus_broadcast alert takes at most one argument, the alert's name")
			}
			if len(rest) == 1 {
				h.Name = rest[0]
			}
		default:
			return d.Errf("unknown ipcbus_broadcast setting %q; the settings are source, event, unique and alert", opt)
		}
	}
	if h.Alert && (h.Source != "" || h.Event != "" || h.Unique != "") {
		return d.Err("ipcbus_broadcast: alert sends an IPC alert, which has a name but no source, event or unique key")
	}
	return nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	ipcbus_poll [<matcher>] [<source>...] {
//		source      <source>...   # a trailing * matches a prefix
//		event       <event>...
//		timeout     <duration>    # long-poll wait, default 30s
//		max_timeout <duration>    # cap of the timeout parameter, default 5m
//		keepalive   <duration>    # stream comment interval, default 15s
//		max_streams <n>           # open polls and streams per process, default 10000
//		limit       <n>           # events per long-poll answer, default 100
//	}
//
// Without source or event, the request's "source" and "event" query
// parameters filter. Placeholders are allowed in sources and events.
func (h *Poll) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	h.Sources = d.RemainingArgs()
	for d.NextBlock(0) {
		switch opt := d.Val(); opt {
		case "source", "event":
			vals := d.RemainingArgs()
			if len(vals) == 0 {
				return d.Errf("ipcbus_poll %s needs at least one value", opt)
			}
			if opt == "source" {
				h.Sources = append(h.Sources, vals...)
			} else {
				h.Events = append(h.Events, vals...)
			}
		case "timeout", "max_timeout", "keepalive":
			var v string
			if !d.AllArgs(&v) {
				return d.Errf("ipcbus_poll %s needs exactly one value", opt)
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return d.Errf("ipcbus_poll %s: %q is not a positive duration; write it like 30s", opt, v)
			}
			*map[string]*caddy.Duration{"timeout": &h.Timeout, "max_timeout": &h.MaxTimeout, "keepalive": &h.KeepAlive}[opt] = caddy.Duration(dur)
		case "max_streams", "limit":
			var v string
			if !d.AllArgs(&v) {
				return d.Errf("ipcbus_poll %s needs exactly one value", opt)
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || (opt == "limit" && n > maxPollLimit) {
				return d.Errf("ipcbus_poll %s: %q must be a number from 1%s", opt, v, map[bool]string{true: " to 10000", false: " up"}[opt == "limit"])
			}
			*map[string]*int{"max_streams": &h.MaxStreams, "limit": &h.Limit}[opt] = n
		default:
			return d.Errf("unknown ipcbus_poll setting %q; the settings are source, event, timeout, max_timeout, keepalive, max_streams and limit", opt)
		}
	}
	return nil
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*Send)(nil)
	_ caddyfile.Unmarshaler = (*Broadcast)(nil)
	_ caddyfile.Unmarshaler = (*Poll)(nil)
)
