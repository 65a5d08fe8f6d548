package ipcbus

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"
)

// parseOnAlert reads one on_alert line of the ipcbus global option (the
// dispenser is on "on_alert"):
//
//	on_alert <name> reload
//	on_alert <name> log [debug|info|warn|error]
//	on_alert <name> post <source> <event>
//	on_alert <name> webhook <url> {
//		timeout     <duration>  # one attempt, default 5s
//		attempts    <n>         # 1 to 10, the first included, default 4
//		backoff     <duration>  # before the 2nd attempt, doubling up to 30s, default 500ms
//		queue_size  <n>         # alerts waiting, default 64
//		queue_bytes <size>      # their data, default 16MiB
//	}
func (a *App) parseOnAlert(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) < 2 {
		return d.Errf("on_alert needs an alert name (or a prefix ending in *) and an action: reload, log [<level>], post <source> <event> or webhook <url>")
	}
	o := &OnAlert{Name: args[0], Action: args[1]}
	want := map[string]int{ActionReload: 0, ActionLog: -1, ActionPost: 2, ActionWebhook: 1}
	n, known := want[o.Action]
	if !known {
		return d.Errf("on_alert %s: unknown action %q; use reload, log, post or webhook", o.Name, o.Action)
	}
	rest := args[2:]
	switch {
	case o.Action == ActionLog && len(rest) > 1:
		return d.Errf("on_alert %s log takes at most one argument, the level (debug, info, warn or error)", o.Name)
	case n >= 0 && len(rest) != n:
		return d.Errf("on_alert %s %s: %s", o.Name, o.Action, map[string]string{
			ActionReload: "takes no argument", ActionPost: "needs exactly a source and an event", ActionWebhook: "needs exactly one URL",
		}[o.Action])
	}
	switch o.Action {
	case ActionLog:
		if len(rest) == 1 {
			o.Level = rest[0]
		}
	case ActionPost:
		o.Source, o.Event = rest[0], rest[1]
	case ActionWebhook:
		o.URL = rest[0]
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if o.Action != ActionWebhook {
			return d.Errf("on_alert %s %s takes no block of settings (only webhook does)", o.Name, o.Action)
		}
		opt := d.Val()
		var val string
		if !d.AllArgs(&val) {
			return d.Errf("on_alert webhook %s needs exactly one value", opt)
		}
		switch opt {
		case "timeout", "backoff":
			dur, err := caddy.ParseDuration(val)
			if err != nil || dur <= 0 {
				return d.Errf("on_alert webhook %s: %q is not a positive duration; write it like 5s", opt, val)
			}
			if opt == "timeout" {
				o.Timeout = caddy.Duration(dur)
			} else {
				o.Backoff = caddy.Duration(dur)
			}
		case "attempts", "queue_size":
			v, err := strconv.Atoi(val)
			if err != nil || v < 1 {
				return d.Errf("on_alert webhook %s: %q must be a number from 1 up", opt, val)
			}
			if opt == "attempts" {
				o.Attempts = v
			} else {
				o.QueueSize = v
			}
		case "queue_bytes":
			v, err := queueBytes(d, "on_alert webhook", val)
			if err != nil {
				return err
			}
			o.QueueBytes = v
		default:
			return d.Errf("unknown on_alert webhook setting %q; the settings are timeout, attempts, backoff, queue_size and queue_bytes", opt)
		}
	}
	probe := *o // the JSON keeps only what was written
	probe.setDefaults()
	if err := probe.validate(len(a.OnAlert)); err != nil {
		return d.Err(err.Error())
	}
	a.OnAlert = append(a.OnAlert, o)
	return nil
}

// parseEmit reads the emit block of the ipcbus global option (the
// dispenser is on "emit"):
//
//	emit {
//		alerts      <name>...            # exact, or a prefix ending in *; * for all
//		events      <source>[/<event>]...  # either part may end in *
//		queue_size  <n>                  # default 1024
//		queue_bytes <size>               # default 16MiB
//	}
func (a *App) parseEmit(d *caddyfile.Dispenser) error {
	if a.Emit != nil {
		return d.Err("ipcbus emit is given more than once; put its settings in one block")
	}
	if d.NextArg() {
		return d.Errf("ipcbus emit takes no arguments, only a block (alerts, events, queue_size, queue_bytes); got %q", d.Val())
	}
	e := new(Emit)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch opt := d.Val(); opt {
		case "alerts", "events":
			vals := d.RemainingArgs()
			if len(vals) == 0 {
				return d.Errf("ipcbus emit %s needs at least one pattern", opt)
			}
			if opt == "alerts" {
				e.Alerts = append(e.Alerts, vals...)
			} else {
				e.Events = append(e.Events, vals...)
			}
		case "queue_size", "queue_bytes":
			var val string
			if !d.AllArgs(&val) {
				return d.Errf("ipcbus emit %s needs exactly one value", opt)
			}
			if opt == "queue_bytes" {
				v, err := queueBytes(d, "ipcbus emit", val)
				if err != nil {
					return err
				}
				e.QueueBytes = v
				break
			}
			v, err := strconv.Atoi(val)
			if err != nil || v < 1 {
				return d.Errf("ipcbus emit queue_size: %q must be a number from 1 up", val)
			}
			e.QueueSize = v
		default:
			return d.Errf("unknown ipcbus emit setting %q; the settings are alerts, events, queue_size and queue_bytes", opt)
		}
	}
	probe := *e
	probe.setDefaults()
	if _, err := probe.validate(); err != nil {
		return d.Err(err.Error())
	}
	a.Emit = e
	return nil
}

// queueBytes reads a queue_bytes value: a size from 1 byte to 1TiB.
func queueBytes(d *caddyfile.Dispenser, what, val string) (int64, error) {
	v, err := humanize.ParseBytes(val)
	if err != nil || v == 0 || v > 1<<40 {
		return 0, d.Errf("%s queue_bytes: %q is not a size from 1 byte to 1TiB; write it like 16MiB", what, val)
	}
	return int64(v), nil
}
