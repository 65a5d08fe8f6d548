package master

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/ipcbus/caddy-ipcbus/workermgr"
	"github.com/ipcbus/caddy-ipcbus/zone"
)

// fakeEnv makes the test binary a fake `caddy run` worker: an admin
// endpoint on the config's unix socket (GET /config/, POST /load, POST
// /stop) and a worker of the config's zone. A config whose apps.fake.refuse
// names the worker's socket is refused by that worker.
const fakeEnv = "MASTER_FAKE_WORKER"

// fakeHangEnv makes the fake worker answer its admin endpoint but never
// join the zone: a worker that never comes up.
const fakeHangEnv = "MASTER_FAKE_HANG"

func TestMain(m *testing.M) {
	if os.Getenv(fakeEnv) != "" {
		if err := fakeWorker(os.Args[1:]); err != nil {
			fmt.Fprintln(os.Stderr, "fake worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

type fakeConfig struct {
	Admin struct {
		Listen string `json:"listen"`
	} `json:"admin"`
	Apps struct {
		IPCBus struct {
			Zone string `json:"zone"`
			Dir  string `json:"dir"`
		} `json:"ipcbus"`
		Fake struct {
			Refuse string `json:"refuse"`
		} `json:"fake"`
	} `json:"apps"`
}

func fakeWorker(args []string) error {
	if len(args) != 3 || args[0] != "run" || args[1] != "--config" {
		return fmt.Errorf("unexpected arguments %q", args)
	}
	cfg, err := os.ReadFile(args[2])
	if err != nil {
		return err
	}
	var c fakeConfig
	if err := json.Unmarshal(cfg, &c); err != nil {
		return err
	}
	sock, _, _ := strings.Cut(strings.TrimPrefix(c.Admin.Listen, "unix/"), "|")
	if os.Getenv(fakeHangEnv) != "" {
		ln, err := net.Listen("unix", sock)
		if err != nil {
			return err
		}
		go http.Serve(ln, http.NotFoundHandler())
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGTERM)
		<-sigs
		ln.Close()
		return nil
	}
	z, err := zone.Open(zone.Options{Name: c.Apps.IPCBus.Zone, Dir: c.Apps.IPCBus.Dir, Size: zone.MinSize})
	if err != nil {
		return err
	}
	w, err := workermgr.Join(z, workermgr.Config{Generation: 1})
	if err != nil {
		return err
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return err
	}
	var mu sync.Mutex
	done := make(chan struct{})
	var once sync.Once
	stop := func() { once.Do(func() { close(done) }) }
	mux := http.NewServeMux()
	mux.HandleFunc("/config/", func(rw http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		rw.Write(cfg)
	})
	mux.HandleFunc("/load", func(rw http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var nc fakeConfig
		if err := json.Unmarshal(b, &nc); err != nil {
			http.Error(rw, `{"error":"bad json"}`, http.StatusBadRequest)
			return
		}
		if nc.Apps.Fake.Refuse == sock {
			http.Error(rw, `{"error":"refused by the fake worker"}`, http.StatusBadRequest)
			return
		}
		mu.Lock()
		cfg = b
		mu.Unlock()
	})
	mux.HandleFunc("/stop", func(http.ResponseWriter, *http.Request) { stop() })
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM)
	select {
	case <-done:
	case <-sigs:
	}
	ln.Close()
	os.Remove(sock)
	return w.Leave(workermgr.ReasonShutdown)
}

// fakeGroup runs a master of n fake workers with its admin endpoint on a
// unix socket, and returns it with a client of that endpoint.
func fakeGroup(t *testing.T, n int) (*Master, *http.Client, func()) {
	t.Helper()
	dir := t.TempDir()
	cfg := fmt.Sprintf(`{"apps":{"ipcbus":{"zone":"f","dir":%q}}}`, dir)
	adminSock := dir + "/admin.sock"
	opts := Options{
		Workers: n, Binary: os.Args[0], Config: []byte(cfg),
		AdminNetwork: "unix", AdminAddress: adminSock,
		Env: append(os.Environ(), fakeEnv+"=1"),
	}
	m, err := newMaster(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- m.run(ctx) }()
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", adminSock)
	}}}
	waitUntil(t, "the master to serve", func() bool {
		var in Info
		return getInfo(client, &in) == nil && len(in.Workers) == n
	})
	stop := func() {
		cancel()
		if err := <-ran; err != nil {
			t.Errorf("master: %v", err)
		}
		if ents, err := os.ReadDir(m.dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("left in the zone's directory: %v %v", ents, err)
		}
	}
	return m, client, stop
}

func getInfo(c *http.Client, in *Info) error {
	resp, err := c.Get("http://admin/ipcbus/master")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(in)
}
