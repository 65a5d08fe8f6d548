package master

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/ipcbus/caddy-ipcbus/zone"
)

// object is a decoded JSON object of a Caddy config; numbers stay
// json.Number, so that a config goes back out as it came in.
type object = map[string]any

// decode reads a JSON config; an empty one is an empty object.
func decode(cfg []byte) (object, error) {
	if len(bytes.TrimSpace(cfg)) == 0 {
		return object{}, nil
	}
	d := json.NewDecoder(bytes.NewReader(cfg))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, fmt.Errorf("decoding the config: %w", err)
	}
	o, ok := v.(object)
	if !ok {
		return nil, fmt.Errorf("decoding the config: not a JSON object")
	}
	return o, nil
}

// child is o[key] as an object, created when missing (or not an object).
func child(o object, key string) object {
	c, ok := o[key].(object)
	if !ok {
		c = object{}
		o[key] = c
	}
	return c
}

// ZoneOf reads the zone of the ipcbus app of a JSON config: its name,
// directory and mode, with the app's defaults for what is left out.
func ZoneOf(cfg []byte) (zone.Options, error) {
	o, err := decode(cfg)
	if err != nil {
		return zone.Options{}, err
	}
	opts := zone.Options{Name: zone.DefaultName}
	ipc := child(child(o, "apps"), "ipcbus")
	if s, ok := ipc["zone"].(string); ok && s != "" {
		opts.Name = s
	}
	if s, ok := ipc["dir"].(string); ok {
		opts.Dir = s
	}
	if s, ok := ipc["mode"].(string); ok && s != "" {
		m, err := strconv.ParseUint(s, 8, 32)
		if err != nil {
			return zone.Options{}, fmt.Errorf("invalid ipcbus mode %q: give an octal file mode such as 0600", s)
		}
		opts.Mode = os.FileMode(m)
	}
	if err := zone.ValidateName(opts.Name); err != nil {
		return zone.Options{}, err
	}
	return opts, nil
}

// sameZone reports whether two zone options name the same zone.
func sameZone(a, b zone.Options) bool {
	return zone.PathFor(a) == zone.PathFor(b)
}

// workerConfig is cfg as one worker runs it: its admin endpoint on listen
// (the master serves the config's own), always on, never remote (every
// worker would bind the same remote address), its config not persisted
// (the master holds it), the ipcbus app present, so that the worker
// joins the zone the master watches, and its site addresses served from
// the sockets it inherited (inherit, by ListenKey).
func workerConfig(cfg []byte, listen string, inherit map[string]*socket) ([]byte, error) {
	o, err := decode(cfg)
	if err != nil {
		return nil, err
	}
	admin := child(o, "admin")
	delete(admin, "disabled")
	delete(admin, "remote")
	delete(admin, "origins")
	delete(admin, "enforce_origin")
	admin["listen"] = listen
	child(admin, "config")["persist"] = false
	child(child(o, "apps"), "ipcbus")
	inheritAddrs(o, inherit)
	return json.Marshal(o)
}

// withAdminOf is cfg with the admin object of from: a config read back
// from a worker carries the worker's admin endpoint, not the group's, and
// its site addresses in the inherited sockets' network, which go back to
// plain TCP ("ipcbus-tcp/:80" is ":80", "ipcbus-tcp4/..." "tcp4/...").
func withAdminOf(cfg, from []byte) ([]byte, error) {
	o, err := decode(cfg)
	if err != nil {
		return nil, err
	}
	forEachListen(o, func(s string) string {
		rest, ok := strings.CutPrefix(s, NetworkPrefix)
		if !ok {
			return s
		}
		if hp, ok := strings.CutPrefix(rest, "tcp/"); ok {
			return hp
		}
		return rest
	})
	f, err := decode(from)
	if err != nil {
		return nil, err
	}
	if a, ok := f["admin"]; ok {
		o["admin"] = a
	} else {
		delete(o, "admin")
	}
	return json.Marshal(o)
}

// adminListen is the admin address a config gives ("" for the default).
func adminListen(cfg []byte) string {
	o, err := decode(cfg)
	if err != nil {
		return ""
	}
	s, _ := child(o, "admin")["listen"].(string)
	return s
}

// errNotFound is a /config/ path with nothing at it.
var errNotFound = errors.New("no value at that path")

// lookup is the value at a /config/ path of cfg ("/config/apps/http"),
// as JSON, as GET /config/... answers it.
func lookup(cfg []byte, path string) ([]byte, error) {
	o, err := decode(cfg)
	if err != nil {
		return nil, err
	}
	var v any = o
	if len(o) == 0 {
		v = nil
	}
	rest := strings.Trim(strings.TrimPrefix(path, "/config"), "/")
	if rest != "" {
		for _, part := range strings.Split(rest, "/") {
			switch c := v.(type) {
			case object:
				x, ok := c[part]
				if !ok {
					return nil, errNotFound
				}
				v = x
			case []any:
				i, err := strconv.Atoi(part)
				if err != nil || i < 0 || i >= len(c) {
					return nil, errNotFound
				}
				v = c[i]
			default:
				return nil, errNotFound
			}
		}
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// sameJSON reports whether a and b are the same JSON value (key order and
// spacing aside); invalid JSON is never the same.
func sameJSON(a, b []byte) bool {
	var va, vb any
	if json.Unmarshal(a, &va) != nil || json.Unmarshal(b, &vb) != nil {
		return false
	}
	ja, err1 := json.Marshal(va)
	jb, err2 := json.Marshal(vb)
	return err1 == nil && err2 == nil && bytes.Equal(ja, jb)
}
