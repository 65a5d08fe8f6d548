package master

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"time"

	"go.uber.org/zap"
)

// maxConfigBody bounds a config posted to the admin endpoint.
const maxConfigBody = 100 << 20

// adminServer is the group's admin endpoint.
type adminServer struct {
	srv *http.Server
}

func (a *adminServer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = a.srv.Shutdown(ctx)
}

// serveAdmin serves the group's admin endpoint on ln; nil ln serves none.
//
//   - POST /load: the new config, to each worker in turn (see load);
//   - /config/ and /id/: read from the master's copy; changes go through
//     the first worker, then to the others in turn (see mutate);
//   - POST /stop: stops the group gracefully;
//   - GET /ipcbus/master: the master and its workers (Info);
//   - POST /ipcbus/master/upgrade: an upgrade, to the binary named by the
//     JSON body's "binary" (default: the master's own path);
//   - /ipcbus/quiesce: refused (it is for one worker, from the master);
//   - anything else (/ipcbus/*, /metrics...): proxied to a live worker,
//     which answers for the node.
func (m *Master) serveAdmin(ln net.Listener) *adminServer {
	if ln == nil {
		return nil
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/load", m.handleLoad)
	mux.HandleFunc("/config/", m.handleConfig)
	mux.HandleFunc("/config", m.handleConfig)
	mux.HandleFunc("/id/", m.handleConfig)
	mux.HandleFunc("/stop", m.handleStop)
	mux.HandleFunc("/ipcbus/master", m.handleInfo)
	mux.HandleFunc("/ipcbus/master/upgrade", m.handleUpgrade)
	mux.HandleFunc("/ipcbus/quiesce", func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "the master pauses its workers' listeners itself around reloads and stops: /ipcbus/quiesce is not for the group's admin address", http.StatusForbidden)
	})
	m.proxyH = m.proxy()
	mux.Handle("/", m.proxyH)
	a := &adminServer{srv: &http.Server{
		Handler:           m.checkOrigin(mux),
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       time.Minute,
		ErrorLog:          zap.NewStdLog(m.log),
	}}
	go func() {
		if err := a.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			m.log.Error("admin endpoint", zap.Error(err))
		}
	}()
	return a
}

// checkOrigin refuses, as Caddy's admin endpoint does, requests whose Host
// or Origin is not one of AdminHosts (a web page's script reaching the
// endpoint through DNS rebinding), and WebSocket upgrades.
func (m *Master) checkOrigin(next http.Handler) http.Handler {
	allowed := map[string]bool{}
	for _, h := range m.opts.AdminHosts {
		allowed[strings.ToLower(h)] = true
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "" || r.Header.Get("Sec-Fetch-Mode") == "no-cors" {
			writeError(w, http.StatusForbidden, errors.New("request refused"))
			return
		}
		if len(allowed) > 0 {
			if !allowed[strings.ToLower(r.Host)] {
				writeError(w, http.StatusForbidden, errors.New("host not allowed: "+r.Host))
				return
			}
			if o := r.Header.Get("Origin"); o != "" {
				u, err := url.Parse(o)
				if err != nil || !allowed[strings.ToLower(u.Host)] {
					writeError(w, http.StatusForbidden, errors.New("origin not allowed: "+o))
					return
				}
			}
		}
		next.ServeHTTP(w, r)
	})
}

// writeError answers {"error": "..."}, as Caddy's admin endpoint does; a
// worker's own refusal is passed on as it was.
func writeError(w http.ResponseWriter, status int, err error) {
	var ae *adminError
	if errors.As(err, &ae) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(ae.status)
		if json.Valid(ae.body) {
			_, _ = w.Write(ae.body)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]string{"error": string(ae.body)})
		return
	}
	if errors.Is(err, errStopping) {
		status = http.StatusServiceUnavailable
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
}

// postBody reads the body of a POST; anything else is refused.
func postBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	if r.Method != http.MethodPost {
		writeError(w, http.StatusMethodNotAllowed, errors.New("method not allowed"))
		return nil, false
	}
	return readBody(w, r)
}

func readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxConfigBody))
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return nil, false
	}
	return b, true
}

func (m *Master) handleLoad(w http.ResponseWriter, r *http.Request) {
	body, ok := postBody(w, r)
	if !ok {
		return
	}
	cfg, err := m.adapt(body, r.Header.Get("Content-Type"))
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	force := strings.Contains(r.Header.Get("Cache-Control"), "must-revalidate")
	if err := m.load(cfg, force); err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	w.WriteHeader(http.StatusOK)
}

// adapt turns a /load body into JSON according to its content type.
func (m *Master) adapt(body []byte, ct string) ([]byte, error) {
	if ct == "" || strings.Contains(ct, "/json") {
		return body, nil
	}
	if m.opts.Adapt == nil {
		return nil, errors.New("unsupported content type " + ct + ": post JSON")
	}
	return m.opts.Adapt(body, ct)
}

func (m *Master) handleConfig(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	if r.Method == http.MethodGet && strings.HasPrefix(path, "/config") {
		m.mu.Lock()
		cfg := m.config
		m.mu.Unlock()
		out, err := lookup(cfg, path)
		if err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(out)
		return
	}
	if r.Method == http.MethodGet {
		m.proxyH.ServeHTTP(w, r) // an /id/ read: the worker resolves ids
		return
	}
	if strings.HasPrefix(path, "/config/admin") || (strings.Trim(path, "/") == "config" && r.Method == http.MethodDelete) {
		writeError(w, http.StatusForbidden, errors.New("the master owns the admin settings of its workers and cannot unload their config: change the config file and restart caddy ipcbus run"))
		return
	}
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	if strings.Trim(path, "/") == "config" {
		// The whole config: a load.
		if err := m.load(body, strings.Contains(r.Header.Get("Cache-Control"), "must-revalidate")); err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		w.WriteHeader(http.StatusOK)
		return
	}
	hdr := http.Header{}
	for _, k := range []string{"Content-Type", "If-Match", "Cache-Control"} {
		if v := r.Header.Get(k); v != "" {
			hdr.Set(k, v)
		}
	}
	status, answer, err := m.mutate(r.Method, r.URL.RequestURI(), body, hdr)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	w.WriteHeader(status)
	_, _ = w.Write(answer)
}

func (m *Master) handleStop(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		writeError(w, http.StatusMethodNotAllowed, errors.New("method not allowed"))
		return
	}
	m.log.Info("stop requested through the admin endpoint")
	w.WriteHeader(http.StatusOK)
	m.requestStop(true)
}

func (m *Master) handleInfo(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		writeError(w, http.StatusMethodNotAllowed, errors.New("method not allowed"))
		return
	}
	m.writeInfo()
	in, err := ReadInfo(m.dir, m.zone.Name)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(in)
}

// UpgradeRequest is the body of POST /ipcbus/master/upgrade.
type UpgradeRequest struct {
	// Binary is the path of the new binary; default: the path the
	// master was started from.
	Binary string `json:"binary,omitempty"`
}

// UpgradeResult is the answer to a successful upgrade.
type UpgradeResult struct {
	// PIDs are the new workers' process ids.
	PIDs []int `json:"pids"`
}

func (m *Master) handleUpgrade(w http.ResponseWriter, r *http.Request) {
	body, ok := postBody(w, r)
	if !ok {
		return
	}
	var req UpgradeRequest
	if len(strings.TrimSpace(string(body))) > 0 {
		if err := json.Unmarshal(body, &req); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
	}
	ps, err := m.upgrade(req.Binary, m.opts.UpgradeTimeout)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(UpgradeResult{PIDs: ps})
}

// proxy passes a request on to a live worker of the current generation.
func (m *Master) proxy() http.Handler {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host = "http", "127.0.0.1"
			pr.Out.Host = "127.0.0.1"
			pr.Out.Header.Del("Origin")
		},
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				for _, p := range m.live() {
					var d net.Dialer
					if c, err := d.DialContext(ctx, "unix", p.sock); err == nil {
						return c, nil
					}
				}
				return nil, errors.New("no worker is running")
			},
		},
		FlushInterval: -1,
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			writeError(w, http.StatusBadGateway, err)
		},
	}
}
