package ipcbus

import (
	"math"
	"path/filepath"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/dustin/go-humanize"

	"github.com/ipcbus/caddy-ipcbus/events"
	"github.com/ipcbus/caddy-ipcbus/workermgr"
	"github.com/ipcbus/caddy-ipcbus/zone"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("ipcbus", parseGlobalOption)
}

func parseGlobalOption(d *caddyfile.Dispenser, existing any) (any, error) {
	if existing != nil {
		return nil, d.Err("the ipcbus global option is given more than once; put every setting in one block")
	}
	app := new(App)
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "ipcbus", Value: caddyconfig.JSON(app, nil)}, nil
}

// UnmarshalCaddyfile sets up the app from the ipcbus global option. Syntax:
//
//	ipcbus {
//		zone       <name>       # default "default"
//		dir        <path>       # absolute; default /dev/shm, else $XDG_RUNTIME_DIR, else the temp dir
//		size       <size>       # default 64MiB; MB is 10^6 bytes, MiB 2^20
//		mode       <octal>      # default 0600; 0660 to share with the processes' common group
//		heartbeat  <duration>   # default 1s
//		dead_after <duration>   # default 5s, longer than heartbeat
//		unique_timeout <duration>  # default 2s
//		max_payload <size>      # default 64MiB, at most 4294967040 bytes
//		blob_quota <size>       # default 256MiB (or max_payload if larger), at least max_payload
//		wait_max   <duration>   # default 500ms
//		spin       <duration>   # default 50µs
//		send_timeout <duration> # default 5s
//		alert_overflow block|drop  # default block
//		max_streams <n>         # polls and streams of all ipcbus_poll handlers together; default 10000
//		unique_keys <n>         # run-once keys held at once, 256 to 1048576; default 4096
//		fleet <name> { ... }    # join a fleet of hosts through NATS JetStream (see parseFleet)
//
//		# React to the IPC alerts this process receives (sent to its pid, or
//		# broadcast). <name> is exact, or a prefix ending in * (* for all);
//		# every matching line runs, in order. Repeatable.
//		on_alert <name> reload                  # reload the config file, as SIGUSR1 does
//		on_alert <name> log [<level>]           # debug, info (default), warn or error
//		on_alert <name> post <source> <event>   # a bus event with the alert's data
//		on_alert <name> webhook <url> {         # POST the data; the block is optional
//			timeout     <duration>   # one attempt, default 5s
//			attempts    <n>          # 1 to 10, the first included, default 4
//			backoff     <duration>   # before the 2nd attempt, doubling up to 30s, default 500ms
//			queue_size  <n>          # alerts waiting, default 64
//			queue_bytes <size>       # their data, default 16MiB
//		}
//
//		# Emit into Caddy's events app, for events handlers (events { on ipcbus_alert … }).
//		emit {
//			alerts      <name>...              # as ipcbus_alert
//			events      <source>[/<event>]...  # as ipcbus_event; either part may end in *
//			queue_size  <n>                    # default 1024
//			queue_bytes <size>                 # default 16MiB
//		}
//	}
//
// Every setting is optional, and so is the block.
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the option's name
	if d.NextArg() {
		return d.Errf("ipcbus takes no arguments, only a block of settings; got %q", d.Val())
	}
	for d.NextBlock(0) {
		opt := d.Val()
		if opt == "fleet" {
			if a.Fleet != nil {
				return d.Err("ipcbus fleet is given more than once; a host joins one fleet")
			}
			fc, err := parseFleet(d)
			if err != nil {
				return err
			}
			a.Fleet = fc
			continue
		}
		switch opt {
		case "on_alert":
			if err := a.parseOnAlert(d); err != nil {
				return err
			}
			continue
		case "emit":
			if err := a.parseEmit(d); err != nil {
				return err
			}
			continue
		case "zone", "dir", "size", "mode", "heartbeat", "dead_after", "unique_timeout", "max_payload", "blob_quota", "wait_max", "spin", "send_timeout", "alert_overflow", "max_streams", "unique_keys":
		default:
			return d.Errf("unknown ipcbus setting %q; the settings are zone, dir, size, mode, heartbeat, dead_after, unique_timeout, max_payload, blob_quota, wait_max, spin, send_timeout, alert_overflow, max_streams, unique_keys, on_alert, emit and fleet", opt)
		}
		var val string
		if !d.AllArgs(&val) {
			return d.Errf("ipcbus %s needs exactly one value", opt)
		}
		switch opt {
		case "zone":
			if err := zone.ValidateName(val); err != nil {
				return d.Errf("ipcbus zone: %v", err)
			}
			a.Zone = val
		case "dir":
			if !filepath.IsAbs(val) {
				return d.Errf("ipcbus dir: %q is not an absolute path", val)
			}
			a.Dir = val
		case "size":
			n, err := humanize.ParseBytes(val)
			if err != nil {
				return d.Errf("ipcbus size: %q is not a size; write it like 64MiB (2^20 bytes) or 64MB (10^6 bytes)", val)
			}
			if n > zone.MaxSize {
				return d.Errf("ipcbus size: %s is too large: must be between 1MiB and 64GiB", val)
			}
			if err := zone.ValidateSize(int64(n)); err != nil {
				return d.Errf("ipcbus size: %s: must be between 1MiB and 64GiB", val)
			}
			a.Size = int64(n)
		case "mode":
			if _, err := parseMode(val); err != nil {
				return d.Errf("ipcbus mode: %v", err)
			}
			a.Mode = val
		case "max_payload":
			n, err := humanize.ParseBytes(val)
			if err != nil {
				return d.Errf("ipcbus max_payload: %q is not a size; write it like 16MiB", val)
			}
			if n == 0 || n > events.MaxPayloadLimit {
				return d.Errf("ipcbus max_payload: %s: must be between 1 byte and 4294967040 bytes", val)
			}
			a.MaxPayload = int64(n)
		case "blob_quota":
			n, err := humanize.ParseBytes(val)
			if err != nil {
				return d.Errf("ipcbus blob_quota: %q is not a size; write it like 256MiB", val)
			}
			if n == 0 || n > math.MaxInt64 {
				return d.Errf("ipcbus blob_quota: %s: must be at least 1 byte (and at least max_payload)", val)
			}
			a.BlobQuota = int64(n)
		case "unique_keys":
			n, err := strconv.Atoi(val)
			if err != nil {
				return d.Errf("ipcbus unique_keys: %q is not a number", val)
			}
			if err := zone.ValidateUniqueKeys(n, 0); err != nil {
				return d.Errf("ipcbus unique_keys: %v", err)
			}
			a.UniqueKeys = n
		case "max_streams":
			n, err := strconv.ParseInt(val, 10, 64)
			if err != nil || n < 1 {
				return d.Errf("ipcbus max_streams: %q must be a number from 1 up", val)
			}
			a.MaxStreams = n
		case "alert_overflow":
			if val != "block" && val != "drop" {
				return d.Errf("ipcbus alert_overflow: %q: use block or drop", val)
			}
			a.AlertOverflow = val
		case "heartbeat", "dead_after", "unique_timeout", "wait_max", "spin", "send_timeout":
			dur, err := caddy.ParseDuration(val)
			if err != nil {
				return d.Errf("ipcbus %s: %q is not a duration; write it like 1s or 500ms", opt, val)
			}
			if dur <= 0 {
				return d.Errf("ipcbus %s: %s must be positive", opt, val)
			}
			*a.durationField(opt) = caddy.Duration(dur)
		}
	}
	if a.BlobQuota != 0 {
		payload := a.MaxPayload
		if payload == 0 {
			payload = events.DefaultMaxPayload
		}
		if a.BlobQuota < payload {
			return d.Errf("ipcbus blob_quota: %d bytes is smaller than max_payload (%d bytes), so the largest payloads could never be posted; raise it or lower max_payload", a.BlobQuota, payload)
		}
	}
	hb, dead := time.Duration(a.Heartbeat), time.Duration(a.DeadAfter)
	if hb == 0 {
		hb = workermgr.DefaultHeartbeat
	}
	if dead == 0 {
		dead = workermgr.DefaultDeadAfter
	}
	if dead <= hb {
		return d.Errf("ipcbus: dead_after (%v) must be longer than heartbeat (%v)", dead, hb)
	}
	return nil
}

// durationField is the field of the duration setting opt.
func (a *App) durationField(opt string) *caddy.Duration {
	switch opt {
	case "heartbeat":
		return &a.Heartbeat
	case "dead_after":
		return &a.DeadAfter
	case "unique_timeout":
		return &a.UniqueTimeout
	case "wait_max":
		return &a.WaitMax
	case "spin":
		return &a.Spin
	case "send_timeout":
		return &a.SendTimeout
	}
	panic("ipcbus: no duration setting " + opt)
}

// Interface guard
var _ caddyfile.Unmarshaler = (*App)(nil)
