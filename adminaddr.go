package ipcbus

import (
	"net"
	"reflect"
	"strings"

	"github.com/caddyserver/caddy/v2"
)

// Caddy has no accessor for the admin address of the config being loaded.
// caddy.ActiveContext is still the previous config's while the new one's
// apps provision and start, the raw config is locked for the whole load,
// and CADDY_ADMIN only gives the default. But the caddy.Context that
// Provision gets carries the *caddy.Config it loads (an unexported field,
// cfg), whose exported Admin field Caddy fills in (the default included)
// before it provisions any app. configAdmin reads it through reflection;
// should a Caddy version rename the field, it reports the address as
// unknown, and the clash check is skipped rather than wrong.

// configAdmin returns the admin address of the config ctx loads, as
// written ("localhost:2019", "unix//run/caddy.sock|0600"...), with off
// true when the admin endpoint is disabled, and ok false when the config
// cannot be read.
func configAdmin(ctx caddy.Context) (addr string, off, ok bool) {
	f := reflect.ValueOf(&ctx).Elem().FieldByName("cfg")
	if !f.IsValid() || f.Type() != reflect.TypeFor[*caddy.Config]() || f.IsNil() {
		return "", false, false
	}
	cfg := (*caddy.Config)(f.UnsafePointer())
	if cfg.Admin == nil {
		return caddy.DefaultAdminListen, false, true
	}
	if cfg.Admin.Disabled {
		return "", true, true
	}
	if cfg.Admin.Listen == "" {
		return caddy.DefaultAdminListen, false, true
	}
	return cfg.Admin.Listen, false, true
}

// adminKey normalizes an admin address so that two spellings of one
// endpoint compare equal: "unix/<path>" for a socket (the file mode
// dropped), else "tcp/<port>" for the loopback and wildcard hosts (with
// SO_REUSEPORT, localhost:2019, 127.0.0.1:2019 and :2019 all catch the
// requests of one another's clients) and "tcp/<host>:<port>" for the
// others. An address it cannot parse is kept as written.
func adminKey(addr string) string {
	repl := caddy.NewReplacer()
	addr = repl.ReplaceKnown(addr, "")
	na, err := caddy.ParseNetworkAddress(addr)
	if err != nil {
		return addr
	}
	if na.IsUnixNetwork() {
		path, _, _ := strings.Cut(na.Host, "|")
		return "unix/" + path
	}
	if na.IsFdNetwork() {
		return na.String()
	}
	port := na.JoinHostPort(0)
	_, port, _ = net.SplitHostPort(port)
	switch strings.ToLower(na.Host) {
	case "", "localhost", "127.0.0.1", "::1", "0.0.0.0", "::":
		return "tcp/" + port
	}
	return "tcp/" + strings.ToLower(na.Host) + ":" + port
}
