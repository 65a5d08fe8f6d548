package ipcbus

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"
)

// parseFleet reads the fleet block of the ipcbus global option:
//
//	fleet <name> {
//		nats      <url>...       # default nats://127.0.0.1:4222
//		node      <id>           # default: the hostname
//		sources   <pattern>...   # exact, or a prefix ending in *; default: all but the reserved
//		creds     <file>         # or one of:
//		nkey      <file>
//		token     <token>
//		user      <name> <password>
//		tls {
//			ca          <file>
//			cert        <file>
//			key         <file>
//			server_name <name>
//		}
//		replicas  <1-5>          # of the stream and buckets it creates; default 1
//		max_age   <duration>     # the stream's; default 24h
//		max_bytes <size>         # the stream's; default 1GiB
//		node_ttl  <duration>     # this host's entry; default 15s
//	}
//
// The d cursor is on "fleet".
func parseFleet(d *caddyfile.Dispenser) (*FleetConfig, error) {
	fc := new(FleetConfig)
	if !d.NextArg() {
		return nil, d.Err("ipcbus fleet needs a name: fleet <name> { ... }")
	}
	fc.Name = d.Val()
	if d.NextArg() {
		return nil, d.Errf("ipcbus fleet takes one name, then a block; got %q too", d.Val())
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		args := d.RemainingArgs()
		one := func() (string, error) {
			if len(args) != 1 {
				return "", d.Errf("ipcbus fleet %s needs exactly one value", opt)
			}
			return args[0], nil
		}
		var err error
		switch opt {
		case "nats", "sources":
			if len(args) == 0 {
				return nil, d.Errf("ipcbus fleet %s needs at least one value", opt)
			}
			if opt == "nats" {
				fc.NATS = append(fc.NATS, args...)
			} else {
				fc.Sources = append(fc.Sources, args...)
			}
		case "node":
			fc.Node, err = one()
		case "creds":
			fc.Creds, err = one()
		case "nkey":
			fc.NKey, err = one()
		case "token":
			fc.Token, err = one()
		case "user":
			if len(args) != 2 {
				return nil, d.Err("ipcbus fleet user needs a name and a password")
			}
			fc.User, fc.Password = args[0], args[1]
		case "tls":
			if len(args) != 0 {
				return nil, d.Err("ipcbus fleet tls takes a block, no values")
			}
			fc.TLS = new(FleetTLS)
			for tn := d.Nesting(); d.NextBlock(tn); {
				k := d.Val()
				var v string
				if !d.AllArgs(&v) {
					return nil, d.Errf("ipcbus fleet tls %s needs exactly one value", k)
				}
				switch k {
				case "ca":
					fc.TLS.CA = v
				case "cert":
					fc.TLS.Cert = v
				case "key":
					fc.TLS.Key = v
				case "server_name":
					fc.TLS.ServerName = v
				default:
					return nil, d.Errf("unknown ipcbus fleet tls setting %q; the settings are ca, cert, key and server_name", k)
				}
			}
		case "replicas":
			var v string
			if v, err = one(); err == nil {
				if fc.Replicas, err = strconv.Atoi(v); err != nil || fc.Replicas < 1 || fc.Replicas > 5 {
					return nil, d.Errf("ipcbus fleet replicas: %q must be a number from 1 to 5", v)
				}
			}
		case "max_age", "node_ttl":
			var v string
			if v, err = one(); err == nil {
				dur, perr := caddy.ParseDuration(v)
				if perr != nil || dur <= 0 {
					return nil, d.Errf("ipcbus fleet %s: %q is not a positive duration; write it like 24h or 15s", opt, v)
				}
				if opt == "max_age" {
					fc.MaxAge = caddy.Duration(dur)
				} else {
					fc.NodeTTL = caddy.Duration(dur)
				}
			}
		case "max_bytes":
			var v string
			if v, err = one(); err == nil {
				n, perr := humanize.ParseBytes(v)
				if perr != nil || n == 0 || n > 1<<62 {
					return nil, d.Errf("ipcbus fleet max_bytes: %q is not a size; write it like 1GiB", v)
				}
				fc.MaxBytes = int64(n)
			}
		default:
			return nil, d.Errf("unknown ipcbus fleet setting %q; the settings are nats, node, sources, creds, nkey, token, user, tls, replicas, max_age, max_bytes and node_ttl", opt)
		}
		if err != nil {
			return nil, err
		}
	}
	return fc, nil
}
