package ipcbus

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"golang.org/x/sys/unix"

	"github.com/ipcbus/caddy-ipcbus/master"
)

// A worker of `caddy ipcbus run` serves its sites from listening sockets
// the master holds (master/sockets.go): its config names them
// "ipcbus-tcp/:8080", and master.ListenFDsEnv says which descriptor is
// which. Each listener Caddy asks for is a duplicate of the inherited
// socket, so closing it on a reload or a stop leaves the socket, and the
// connections queued on it, to the other workers.
func init() {
	for _, n := range []string{"tcp", "tcp4", "tcp6"} {
		caddy.RegisterNetwork(master.NetworkPrefix+n, listenInherited)
		caddyhttp.RegisterNetworkHTTP3(master.NetworkPrefix+n, strings.Replace(n, "tcp", "udp", 1))
	}
	// Adopted at once, not at the first listen: a config that names none
	// of them must not leave them to the programs this process starts.
	_, _ = inheritedSockets()
}

// inherited is this process's inherited sockets by master.ListenKey,
// read from the environment once.
var inherited struct {
	once  sync.Once
	files map[string]*os.File
	err   error
}

// inheritedSockets adopts the sockets master.ListenFDsEnv names: each must
// be a listening TCP socket. They are made close-on-exec, and the variable
// is removed, so that no program this process starts takes them for its own.
func inheritedSockets() (map[string]*os.File, error) {
	inherited.once.Do(func() {
		spec, ok := os.LookupEnv(master.ListenFDsEnv)
		if !ok {
			return
		}
		os.Unsetenv(master.ListenFDsEnv)
		inherited.files, inherited.err = parseInherited(spec)
	})
	return inherited.files, inherited.err
}

// parseInherited reads "tcp/:8080=3,tcp4/127.0.0.1:9000=4".
func parseInherited(spec string) (map[string]*os.File, error) {
	files := map[string]*os.File{}
	for item := range strings.SplitSeq(spec, ",") {
		if item == "" {
			continue
		}
		i := strings.LastIndexByte(item, '=')
		if i < 0 {
			return nil, fmt.Errorf("invalid %s entry %q: want address=descriptor", master.ListenFDsEnv, item)
		}
		key := item[:i]
		fd, err := strconv.Atoi(item[i+1:])
		if err != nil || fd < 3 {
			return nil, fmt.Errorf("invalid %s entry %q: the descriptor must be a number of at least 3", master.ListenFDsEnv, item)
		}
		if err := checkListening(fd); err != nil {
			return nil, fmt.Errorf("inherited socket %s (descriptor %d): %w", key, fd, err)
		}
		unix.CloseOnExec(fd)
		files[key] = os.NewFile(uintptr(fd), key)
	}
	return files, nil
}

// checkListening reports an error unless fd is a listening stream socket.
func checkListening(fd int) error {
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return fmt.Errorf("not a socket: %w", err)
	}
	if typ != unix.SOCK_STREAM {
		return fmt.Errorf("not a stream socket (type %d)", typ)
	}
	acc, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	if err != nil || acc == 0 {
		return fmt.Errorf("not listening")
	}
	return nil
}

// listenInherited is Caddy's listener for the ipcbus-tcp networks: the
// inherited socket of the address when there is one (a worker of a
// master that bound it), otherwise a socket of its own on the address,
// bound as Caddy binds one (SO_REUSEPORT): a config with such an address
// still runs outside a master, and a worker that was started before a
// reload added the address binds it itself.
func listenInherited(ctx context.Context, network, host, portRange string, portOffset uint, cfg net.ListenConfig) (any, error) {
	base := strings.TrimPrefix(network, master.NetworkPrefix)
	first, _, _ := strings.Cut(portRange, "-")
	p, err := strconv.ParseUint(first, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("invalid port %q in a %s address: want a number from 1 to 65535", portRange, network)
	}
	port := p + uint64(portOffset)
	files, err := inheritedSockets()
	if err != nil {
		return nil, err
	}
	if f := files[master.ListenKey(base, host, port)]; f != nil {
		ln, err := net.FileListener(f) // a duplicate: closing it leaves f
		if err != nil {
			return nil, fmt.Errorf("listening on the inherited socket of %s: %w", master.ListenKey(base, host, port), err)
		}
		return addInherited(master.ListenKey(base, host, port), ln.(*net.TCPListener), cfg.KeepAliveConfig), nil
	}
	control := cfg.Control
	cfg.Control = func(network, address string, c syscall.RawConn) error {
		if control != nil {
			if err := control(network, address, c); err != nil {
				return err
			}
		}
		return master.ReusePort(network, address, c)
	}
	return cfg.Listen(ctx, base, net.JoinHostPort(host, strconv.FormatUint(port, 10)))
}

// Go's http.Server drops a request it reads once its Shutdown has begun,
// on a connection it accepted before: the client sees its connection
// closed with no answer. So the listener of a config being replaced, or
// of a worker about to stop, stops accepting first, and leaves the queue
// to the listener that replaces it or to the other workers:
//
//   - a new listener on an address quiets the older ones of the process
//     (a reload's new servers start before the old ones shut down);
//     closing the newest gives its turn back to the one before (a config
//     that failed to start);
//   - before it loads a config into a worker, the master pauses the
//     worker's listeners (POST /ipcbus/quiesce?for=), and resumes the
//     newest after (DELETE /ipcbus/quiesce): the connections the old ones
//     accepted have their requests read before the old servers shut
//     down, and the new ones accept only once the whole config started;
//   - before it stops a worker, the master quiets them for good (POST
//     /ipcbus/quiesce).
var inheritedGroup struct {
	mu       sync.Mutex
	byKey    map[string][]*inheritedListener // oldest first; the last accepts
	quiesced bool                            // for good: the process stops
	paused   bool                            // a config load runs: no listener accepts
	resume   *time.Timer                     // ends a pause
}

// addInherited registers a listener on the inherited socket of key.
func addInherited(key string, tl *net.TCPListener, ka net.KeepAliveConfig) *inheritedListener {
	l := &inheritedListener{tl: tl, key: key, ka: ka}
	l.cond = sync.NewCond(&l.mu)
	inheritedGroup.mu.Lock()
	defer inheritedGroup.mu.Unlock()
	if inheritedGroup.byKey == nil {
		inheritedGroup.byKey = map[string][]*inheritedListener{}
	}
	for _, old := range inheritedGroup.byKey[key] {
		old.setQuiet(true)
	}
	inheritedGroup.byKey[key] = append(inheritedGroup.byKey[key], l)
	l.quiet = inheritedGroup.quiesced || inheritedGroup.paused
	return l
}

// quiesceInherited makes every inherited listener of the process stop
// accepting, for good: the process is about to stop. It reports how many
// it quieted.
func quiesceInherited() int {
	inheritedGroup.mu.Lock()
	defer inheritedGroup.mu.Unlock()
	inheritedGroup.quiesced = true
	return quietAllLocked()
}

// pauseInherited makes the inherited listeners stop accepting for up to
// d, while a config load runs, and the listeners the load makes start
// quiet too: a config whose servers start and then stop (a later app
// failed) would drop what they accepted. resumeInherited (or d running
// out) gives the queue to the newest listener of each address: the new
// config's, or the old one's when the load failed. It reports how many
// it paused.
func pauseInherited(d time.Duration) int {
	inheritedGroup.mu.Lock()
	defer inheritedGroup.mu.Unlock()
	if inheritedGroup.resume != nil {
		inheritedGroup.resume.Stop()
	}
	inheritedGroup.resume = time.AfterFunc(d, func() { resumeInherited() })
	inheritedGroup.paused = true
	return quietAllLocked()
}

// resumeInherited ends a pause: the newest listener of each address
// accepts again, unless the process is quiesced. It reports how many
// listeners accept.
func resumeInherited() int {
	inheritedGroup.mu.Lock()
	defer inheritedGroup.mu.Unlock()
	if inheritedGroup.resume != nil {
		inheritedGroup.resume.Stop()
		inheritedGroup.resume = nil
	}
	inheritedGroup.paused = false
	if inheritedGroup.quiesced {
		return 0
	}
	for _, ls := range inheritedGroup.byKey {
		ls[len(ls)-1].setQuiet(false)
	}
	return len(inheritedGroup.byKey)
}

func quietAllLocked() int {
	n := 0
	for _, ls := range inheritedGroup.byKey {
		for _, l := range ls {
			l.setQuiet(true)
			n++
		}
	}
	return n
}

// inheritedListener is one config's listener on an inherited socket.
type inheritedListener struct {
	tl  *net.TCPListener
	key string
	ka  net.KeepAliveConfig

	mu     sync.Mutex
	cond   *sync.Cond
	quiet  bool // not accepting: another listener (or none) takes the queue
	closed bool
}

// setQuiet stops or resumes accepting; a blocked Accept is woken through
// the socket's deadline.
func (l *inheritedListener) setQuiet(q bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || l.quiet == q {
		return
	}
	l.quiet = q
	if q {
		_ = l.tl.SetDeadline(time.Now())
		return
	}
	_ = l.tl.SetDeadline(time.Time{})
	l.cond.Broadcast()
}

// Accept waits while the listener is quiet, then accepts a connection
// and sets its keep-alive as Caddy's own listeners do (a listener made
// from a file has none).
func (l *inheritedListener) Accept() (net.Conn, error) {
	for {
		l.mu.Lock()
		for l.quiet && !l.closed {
			l.cond.Wait()
		}
		closed := l.closed
		l.mu.Unlock()
		if closed {
			return nil, net.ErrClosed
		}
		c, err := l.tl.AcceptTCP()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue // quieted meanwhile
			}
			return nil, err
		}
		if l.ka.Enable {
			_ = c.SetKeepAliveConfig(l.ka)
		}
		return c, nil
	}
}

// Close closes this listener, not the inherited socket, and gives the
// queue back to the listener before it when it was the newest.
func (l *inheritedListener) Close() error {
	inheritedGroup.mu.Lock()
	ls := inheritedGroup.byKey[l.key]
	for i, x := range ls {
		if x == l {
			ls = append(ls[:i:i], ls[i+1:]...)
			if i == len(ls) && i > 0 && !inheritedGroup.quiesced && !inheritedGroup.paused {
				ls[i-1].setQuiet(false)
			}
			break
		}
	}
	if len(ls) == 0 {
		delete(inheritedGroup.byKey, l.key)
	} else {
		inheritedGroup.byKey[l.key] = ls
	}
	inheritedGroup.mu.Unlock()
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	l.cond.Broadcast()
	l.mu.Unlock()
	return l.tl.Close()
}

// Addr is the socket's address.
func (l *inheritedListener) Addr() net.Addr { return l.tl.Addr() }
