package master

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// The master owns the listening sockets of the sites, as nginx's does:
// it binds each TCP address the config's HTTP servers listen on once, and
// every worker inherits the same socket (one accept queue for the
// group). A worker that reloads, stops or dies closes only its copy, so a
// connection waiting in the queue is never reset: with a socket per
// worker (SO_REUSEPORT), closing one resets what waits in its queue.
//
// A worker learns its sockets from ListenFDsEnv, and its config names
// them with NetworkPrefix ("ipcbus-tcp/:8080"), a network the ipcbus
// plugin registers with Caddy: the address keeps its port, so Caddy's
// automatic HTTPS and HTTP/3 see the same address as before.
const (
	// ListenFDsEnv is the environment variable listing a worker's
	// inherited sockets: "tcp/:8080=3,tcp4/127.0.0.1:9000=4".
	ListenFDsEnv = "IPCBUS_LISTEN_FDS"
	// NetworkPrefix turns a TCP network of a worker's config ("tcp",
	// "tcp4", "tcp6") into the one served from an inherited socket.
	NetworkPrefix = "ipcbus-"
)

// socket is one listening socket the master holds for its workers.
type socket struct {
	key  string   // ListenKey form: "tcp/:8080"
	file *os.File // the master's reference; workers get it as ExtraFiles
	// down is set once a reload dropped its address: it no longer
	// listens, and no config names it again (a later config binds the
	// address in each worker, as without a master).
	down atomic.Bool
}

// ListenKey is how the master and its workers name a listening address:
// its network ("tcp", "tcp4" or "tcp6"), a slash, then host and port.
func ListenKey(network, host string, port uint64) string {
	return network + "/" + net.JoinHostPort(host, strconv.FormatUint(port, 10))
}

// listenKey is the key of a Caddy listen address the master can hold: a
// TCP address of one fixed port, without placeholders; ok is false for
// the others (unix sockets, UDP, port ranges, port 0, "{env.PORT}"),
// which each worker binds itself.
func listenKey(addr string) (key, network, hostport string, ok bool) {
	if strings.ContainsAny(addr, "{}") {
		return "", "", "", false
	}
	rest := addr
	if n, r, found := strings.Cut(addr, "/"); found {
		network, rest = strings.ToLower(strings.TrimSpace(n)), r
	}
	switch network {
	case "":
		network = "tcp"
	case "tcp", "tcp4", "tcp6":
	default:
		return "", "", "", false
	}
	host, port, err := net.SplitHostPort(rest)
	if err != nil {
		return "", "", "", false
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return "", "", "", false
	}
	return ListenKey(network, host, p), network, net.JoinHostPort(host, port), true
}

// listenAddrs is every listen address of the config's HTTP servers.
func listenAddrs(o object) []string {
	var out []string
	forEachListen(o, func(s string) string { out = append(out, s); return s })
	return out
}

// forEachListen calls f on each listen address of the config's HTTP
// servers and puts back what it returns.
func forEachListen(o object, f func(string) string) {
	apps, _ := o["apps"].(object)
	httpApp, _ := apps["http"].(object)
	servers, _ := httpApp["servers"].(object)
	names := make([]string, 0, len(servers))
	for name := range servers {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		srv, _ := servers[name].(object)
		list, _ := srv["listen"].([]any)
		for i, a := range list {
			if s, ok := a.(string); ok {
				list[i] = f(s)
			}
		}
	}
}

// inheritAddrs rewrites the listen addresses of o that have a socket in
// inherit to the network the worker serves from it.
func inheritAddrs(o object, inherit map[string]*socket) {
	if len(inherit) == 0 {
		return
	}
	forEachListen(o, func(s string) string { return inheritAddr(s, inherit) })
}

// inheritAddr is the listen address s in the network the worker serves
// it from, when inherit has a socket for it; s otherwise.
func inheritAddr(s string, inherit map[string]*socket) string {
	key, network, hostport, ok := listenKey(s)
	if !ok {
		return s
	}
	if sk := inherit[key]; sk == nil || sk.down.Load() {
		return s
	}
	return NetworkPrefix + network + "/" + hostport
}

// inheritBody is the body of a change of the config at path (a /config/
// or /id/ path, with its query; an /id/ is looked up in cfg, the config
// the change applies to) with the listen addresses it holds rewritten as
// inheritAddrs rewrites a whole config: a server, its listen list or one
// entry of it, or any object above them. A worker given the change then
// serves those addresses from its inherited sockets at once, never from a
// socket of its own, whose queue it would reset when it is given the
// inherited one. Other bodies (an unknown @id, what is not JSON) come
// back as they are.
func inheritBody(cfg []byte, uri string, body []byte, inherit map[string]*socket) []byte {
	if len(inherit) == 0 || len(bytes.TrimSpace(body)) == 0 {
		return body
	}
	// The path as Caddy reads it: decoded, an /id/ expanded and cleaned.
	u, err := url.ParseRequestURI(uri)
	if err != nil {
		return body
	}
	p := u.Path
	if rest, ok := strings.CutPrefix(p, "/id/"); ok {
		id, below, _ := strings.Cut(rest, "/")
		o, err := decode(cfg)
		if err != nil {
			return body
		}
		at, ok := idPath(o, id)
		if !ok {
			return body
		}
		p = path.Join("/config", strings.Join(at, "/"), below)
	}
	rest, ok := strings.CutPrefix(p+"/", "/config/")
	if !ok {
		return body
	}
	var segs []string
	if rest = strings.Trim(rest, "/"); rest != "" {
		segs = strings.Split(rest, "/")
	}
	want := []string{"apps", "http", "servers", "", "listen", ""} // "" is any
	if len(segs) > len(want) {
		return body
	}
	for i, sg := range segs {
		if sg == "" || want[i] != "" && sg != want[i] {
			return body
		}
	}
	var v any
	if json.Unmarshal(body, &v) != nil {
		return body
	}
	if len(segs) >= 5 { // the list, an entry of it, or entries to append ("/...")
		switch x := v.(type) {
		case string:
			v = inheritAddr(x, inherit)
		case []any:
			for i, a := range x {
				if str, ok := a.(string); ok {
					x[i] = inheritAddr(str, inherit)
				}
			}
		default:
			return body
		}
		out, err := json.Marshal(v)
		if err != nil {
			return body
		}
		return out
	}
	// Put the value where it goes in a whole config, rewrite, take it out.
	top := v
	for i := len(segs) - 1; i >= 0; i-- {
		top = object{segs[i]: top}
	}
	o, ok := top.(object)
	if !ok {
		return body
	}
	inheritAddrs(o, inherit)
	for _, sg := range segs {
		v = o[sg]
		o, _ = v.(object)
	}
	out, err := json.Marshal(v)
	if err != nil {
		return body
	}
	return out
}

// idPath is where in v the object with "@id": id is, as the segments of
// its /config/ path.
func idPath(v any, id string) ([]string, bool) {
	switch x := v.(type) {
	case object:
		if at, ok := x["@id"]; ok && fmt.Sprint(at) == id { // a string or a number, as Caddy takes it
			return []string{}, true
		}
		for k, c := range x {
			if p, ok := idPath(c, id); ok {
				return append([]string{k}, p...), true
			}
		}
	case []any:
		for i, c := range x {
			if p, ok := idPath(c, id); ok {
				return append([]string{strconv.Itoa(i)}, p...), true
			}
		}
	}
	return nil, false
}

// openSockets binds the TCP addresses of the config's servers. An
// address it cannot bind is logged and left to the workers, which then
// report the error as Caddy would.
func (m *Master) openSockets() {
	o, err := decode(m.config)
	if err != nil {
		return
	}
	seen := map[string]bool{}
	for _, addr := range listenAddrs(o) {
		key, network, hostport, ok := listenKey(addr)
		if !ok || seen[key] {
			continue
		}
		seen[key] = true
		f, err := bindShared(network, hostport)
		if err != nil {
			m.log.Warn("binding a site address for the workers: each worker binds it itself", zap.String("address", addr), zap.Error(err))
			continue
		}
		m.sockets = append(m.sockets, &socket{key: key, file: f})
	}
	if len(m.sockets) > 0 {
		keys := make([]string, len(m.sockets))
		for i, s := range m.sockets {
			keys[i] = s.key
		}
		m.log.Info("listening for the workers", zap.Strings("addresses", keys))
	}
}

// bindShared listens on network and hostport with SO_REUSEPORT (as Caddy
// binds, so a worker binding the address itself shares the port) and
// returns the socket as a file, the listener closed.
func bindShared(network, hostport string) (*os.File, error) {
	lc := net.ListenConfig{Control: ReusePort}
	ln, err := lc.Listen(context.Background(), network, hostport)
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	tl, ok := ln.(*net.TCPListener)
	if !ok {
		return nil, fmt.Errorf("listening on %s: not a TCP listener", hostport)
	}
	// Not tl.File(): its file puts the socket in blocking mode when a
	// worker is started with it (os.StartProcess calls Fd), and the mode
	// belongs to the socket, shared with every worker: a worker's accept
	// then blocks in the kernel, where neither a pause nor Close reaches
	// it (a worker told to stop waited for its next connection). A file
	// made by os.NewFile leaves the mode alone.
	rc, err := tl.SyscallConn()
	if err != nil {
		return nil, err
	}
	var fd int
	var derr error
	if err := rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, fmt.Errorf("listening on %s: %w", hostport, derr)
	}
	return os.NewFile(uintptr(fd), "listener "+network+"/"+hostport), nil
}

// ReusePort sets SO_REUSEPORT on a socket before it binds, as Caddy does
// on its listeners (a net.ListenConfig Control function).
func ReusePort(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	return serr
}

// inheritLocked is what a new worker inherits: its sockets by key, the
// files in fd order (3, 4, ...) and the ListenFDsEnv entry. Call with
// m.mu held.
func (m *Master) inheritLocked() (map[string]*socket, []*os.File, string) {
	in := map[string]*socket{}
	var files []*os.File
	var parts []string
	for _, s := range m.sockets {
		if s.down.Load() {
			continue
		}
		in[s.key] = s
		parts = append(parts, s.key+"="+strconv.Itoa(3+len(files)))
		files = append(files, s.file)
	}
	if len(files) == 0 {
		return nil, nil, ""
	}
	return in, files, ListenFDsEnv + "=" + strings.Join(parts, ",")
}

// dropSockets stops listening on the sockets whose address cfg no longer
// names, once every worker runs cfg: a client then gets a refused
// connection, as from a Caddy that stopped listening there, not one that
// waits in a queue no worker accepts from.
func (m *Master) dropSockets(cfg []byte) {
	o, err := decode(cfg)
	if err != nil {
		return
	}
	named := map[string]bool{}
	for _, addr := range listenAddrs(o) {
		if key, _, _, ok := listenKey(addr); ok {
			named[key] = true
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range m.sockets {
		if s.down.Load() || named[s.key] {
			continue
		}
		s.down.Store(true)
		if err := unix.Shutdown(int(s.file.Fd()), unix.SHUT_RD); err != nil {
			m.log.Warn("closing a site address the config dropped", zap.String("address", s.key), zap.Error(err))
			continue
		}
		m.log.Info("the config no longer names a site address: stopped listening", zap.String("address", s.key))
	}
}

// closeSockets closes the master's references once the workers are gone.
func (m *Master) closeSockets() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range m.sockets {
		s.file.Close()
	}
	m.sockets = nil
}
