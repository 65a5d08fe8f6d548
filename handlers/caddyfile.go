package handlers

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// directives are registered in this order, each right before respond, so
// the order among them is the same in every process: send, broadcast, poll.
var directives = []struct {
	name  string
	parse httpcaddyfile.UnmarshalHandlerFunc
}{
	{"ipcbus_send", func(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) { return unmarshal(h, new(Send)) }},
	{"ipcbus_broadcast", func(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) { return unmarshal(h, new(Broadcast)) }},
	{"ipcbus_poll", func(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) { return unmarshal(h, new(Poll)) }},
}

func init() {
	for _, d := range directives {
		httpcaddyfile.RegisterHandlerDirective(d.name, d.parse)
		httpcaddyfile.RegisterDirectiveOrder(d.name, httpcaddyfile.Before, "respond")
	}
}

type unmarshalHandler interface {
	caddyhttp.MiddlewareHandler
	caddyfile.Unmarshaler
}

func unmarshal(h httpcaddyfile.Helper, m unmarshalHandler) (caddyhttp.MiddlewareHandler, error) {
	return m, m.UnmarshalCaddyfile(h.Dispenser)
}

// oneArg reads the single argument of a setting.
func oneArg(d *caddyfile.Dispenser, directive, opt string) (string, error) {
	var v string
	if !d.AllArgs(&v) {
		return "", d.Errf("%s %s needs exactly one value", directive, opt)
	}
	return v, nil
}

// sizeArg reads a size setting: 1MiB (2^20 bytes), 1MB (10^6 bytes), 512.
func sizeArg(d *caddyfile.Dispenser, directive, opt string) (int64, error) {
	v, err := oneArg(d, directive, opt)
	if err != nil {
		return 0, err
	}
	n, err := parseSize(v)
	if err != nil {
		return 0, d.Errf("%s %s: %v", directive, opt, err)
	}
	return n, nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	ipcbus_send [<matcher>] [<pid> [<name>]] {
//		pid      <pid>
//		name     <name>
//		max_size <size>
//	}
//
// Without pid or name, the request's "pid" and "name" query parameters
// give them. Placeholders are allowed in both. max_size is the largest
// body (the alert's data), like 1MiB (2^20 bytes) or 1MB (10^6 bytes);
// default 1MiB, at most the app's max_payload.
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
		var err error
		switch opt := d.Val(); opt {
		case "pid":
			h.PID, err = oneArg(d, "ipcbus_send", opt)
		case "name":
			h.Name, err = oneArg(d, "ipcbus_send", opt)
		case "max_size":
			h.MaxSize, err = sizeArg(d, "ipcbus_send", opt)
		default:
			return d.Errf("unknown ipcbus_send setting %q; the settings are pid, name and max_size", opt)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	ipcbus_broadcast [<matcher>] [<source> [<event>]] {
//		source   <source>
//		event    <event>
//		unique   <key>
//		alert    [<name>]
//		max_size <size>
//	}
//
// Without source, event or unique, the request's query parameters of the
// same names give them. `alert` broadcasts an IPC alert (named by its
// argument, else the "name" query parameter) instead of posting an event.
// Placeholders are allowed everywhere. max_size is the largest body, like
// 1MiB (2^20 bytes) or 1MB (10^6 bytes); default 1MiB, at most the app's
// max_payload.
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
		var err error
		switch opt := d.Val(); opt {
		case "source":
			h.Source, err = oneArg(d, "ipcbus_broadcast", opt)
		case "event":
			h.Event, err = oneArg(d, "ipcbus_broadcast", opt)
		case "unique":
			h.Unique, err = oneArg(d, "ipcbus_broadcast", opt)
		case "max_size":
			h.MaxSize, err = sizeArg(d, "ipcbus_broadcast", opt)
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
			return d.Errf("unknown ipcbus_broadcast setting %q; the settings are source, event, unique, alert and max_size", opt)
		}
		if err != nil {
			return err
		}
	}
	if h.Alert && (h.Source != "" || h.Event != "" || h.Unique != "") {
		return d.Errf("ipcbus_broadcast: alert sends an IPC alert, which has a name but no source, event or unique key")
	}
	return nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	ipcbus_poll [<matcher>] [<source>...] {
//		source        <source>...   # a trailing * matches a prefix
//		event         <event>...
//		timeout       <duration>    # long-poll wait, default 30s
//		max_timeout   <duration>    # cap of the timeout parameter, default 5m
//		keepalive     <duration>    # stream comment interval, default 15s
//		write_timeout <duration>    # a client not reading this long is dropped, default 10s
//		max_streams   <n>           # open polls and streams of this handler, default 10000
//		limit         <n>           # most events per long-poll answer, default 100, at most 10000
//		max_bytes     <size>        # payload bytes per answer or stream batch, default 1MiB
//		envelope                    # stream events as JSON objects (source included)
//		alerts        [<name>...]   # serve the IPC alerts to this process instead; no name: all
//		ping_interval <duration>    # WebSocket ping interval, default 15s
//		publish                     # WebSocket clients may post events on the socket
//		max_size      <size>        # with publish, the largest message a client sends, default 1MiB
//		origins       <pattern>...  # other origins whose pages may open a WebSocket
//		stream_writers <n>|off      # goroutines writing HTTP/1.1 streams, default one per two cores (1 to 4)
//	}
//
// A request with `Upgrade: websocket` gets the same events over a
// WebSocket, one message per event (with envelope, the event's JSON
// object); with publish, text messages {"source","event","data"} are
// posted as by ipcbus_broadcast and answered {"seq":N} or {"error":…}.
// Only pages of the route's own host may open a WebSocket unless origins
// names other hosts (patterns like *.example.com).
//
// Without source or event, the request's "source" and "event" query
// parameters filter. Placeholders are allowed in sources and events. The
// reserved sources (ipcbus, ipcbus.*, and those of ipcbus_forward, "caddy"
// by default) are served only where a source written here names them.
// With alerts, the route serves the IPC alerts addressed to this process
// (and broadcasts) whose name matches (exact, or a prefix ending in *),
// as JSON objects with the sender's pid, instead of events; sources,
// events and envelope are then not allowed.
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
		case "timeout", "max_timeout", "keepalive", "write_timeout", "ping_interval":
			v, err := oneArg(d, "ipcbus_poll", opt)
			if err != nil {
				return err
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return d.Errf("ipcbus_poll %s: %q is not a positive duration; write it like 30s", opt, v)
			}
			switch opt {
			case "timeout":
				h.Timeout = caddy.Duration(dur)
			case "max_timeout":
				h.MaxTimeout = caddy.Duration(dur)
			case "keepalive":
				h.KeepAlive = caddy.Duration(dur)
			case "ping_interval":
				h.PingInterval = caddy.Duration(dur)
			default:
				h.WriteTimeout = caddy.Duration(dur)
			}
		case "max_streams":
			v, err := oneArg(d, "ipcbus_poll", opt)
			if err != nil {
				return err
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return d.Errf("ipcbus_poll max_streams: %q must be a number from 1 up", v)
			}
			h.MaxStreams = n
		case "limit":
			v, err := oneArg(d, "ipcbus_poll", opt)
			if err != nil {
				return err
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > MaxPollLimit {
				return d.Errf("ipcbus_poll limit: %q must be a number from 1 to %d", v, MaxPollLimit)
			}
			h.Limit = n
		case "max_bytes", "max_size":
			n, err := sizeArg(d, "ipcbus_poll", opt)
			if err != nil {
				return err
			}
			if opt == "max_bytes" {
				h.MaxBytes = n
			} else {
				h.MaxSize = n
			}
		case "envelope", "publish":
			if d.NextArg() {
				return d.Errf("ipcbus_poll %s takes no value", opt)
			}
			if opt == "envelope" {
				h.Envelope = true
			} else {
				h.Publish = true
			}
		case "origins":
			vals := d.RemainingArgs()
			if len(vals) == 0 {
				return d.Errf("ipcbus_poll origins needs at least one host pattern")
			}
			h.Origins = append(h.Origins, vals...)
		case "alerts":
			names := d.RemainingArgs()
			if len(names) == 0 {
				names = []string{"*"}
			}
			for _, n := range names {
				if err := checkAlertPattern(n); err != nil {
					return d.Errf("ipcbus_poll alerts: %v", err)
				}
			}
			h.Alerts = append(h.Alerts, names...)
		case "stream_writers":
			v, err := oneArg(d, "ipcbus_poll", opt)
			if err != nil {
				return err
			}
			if v == "off" {
				h.StreamWriters = -1
				continue
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > MaxStreamWriters {
				return d.Errf("ipcbus_poll stream_writers: %q must be off or a number from 1 to %d", v, MaxStreamWriters)
			}
			h.StreamWriters = n
		default:
			return d.Errf("unknown ipcbus_poll setting %q; the settings are source, event, timeout, max_timeout, keepalive, write_timeout, max_streams, limit, max_bytes, envelope, alerts, ping_interval, publish, max_size, origins and stream_writers", opt)
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
