package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/quic-go/quic-go/http3"
)

// tlsSite serves /events over HTTPS on port with Caddy's internal CA
// (tls internal), HTTP/1.1, HTTP/2 and HTTP/3, on every process of n.
func tlsSite(n *node, port int) {
	n.extra = "local_certs\n\tskip_install_trust\n\tauto_https disable_redirects"
	n.sites = fmt.Sprintf(`https://127.0.0.1:%d {
	tls internal
	handle /events {
		ipcbus_poll
	}
}`, port)
}

// localRoot is the root certificate of the node's internal CA, once the
// process has written it.
func localRoot(t *testing.T, p *proc) *x509.CertPool {
	t.Helper()
	file := filepath.Join(p.n.dir, "caddy", "pki", "authorities", "local", "root.crt")
	var pem []byte
	p.waitFor("the local CA's root", func() bool {
		var err error
		pem, err = os.ReadFile(file)
		return err == nil && len(pem) > 0
	})
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("no certificate in %s", file)
	}
	return pool
}

// TestSSEOverHTTP2AndHTTP3: over HTTPS with Caddy's internal CA (trusted
// by its root, no InsecureSkipVerify), an SSE stream over HTTP/2 (and over
// HTTP/3) receives what is published, in order, with its ids; a new
// stream with Last-Event-ID resumes right after it; open streams (several
// on one connection) end when the process reloads.
func TestSSEOverHTTP2AndHTTP3(t *testing.T) {
	for _, tc := range []struct {
		name  string
		proto int
		tr    func(*tls.Config) http.RoundTripper
	}{
		{"h2", 2, func(c *tls.Config) http.RoundTripper {
			return &http.Transport{TLSClientConfig: c, ForceAttemptHTTP2: true}
		}},
		{"h3", 3, func(c *tls.Config) http.RoundTripper { return &http3.Transport{TLSClientConfig: c} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t)
			port := freePort(t)
			tlsSite(n, port)
			a := n.start()
			tr := tc.tr(&tls.Config{RootCAs: localRoot(t, a)})
			if c, ok := tr.(interface{ Close() error }); ok {
				t.Cleanup(func() { c.Close() })
			}
			client := &http.Client{Transport: tr}
			url := fmt.Sprintf("https://127.0.0.1:%d/events?source=tls", port)
			ctx, cancel := context.WithCancel(context.Background())
			var ch <-chan sseEvent
			var resp *http.Response
			a.waitFor("the HTTPS site to serve a stream", func() bool { // the certificate may come a moment after the start
				var err error
				ch, resp, err = sseWith(ctx, client, url, "")
				return err == nil
			})
			if resp.ProtoMajor != tc.proto {
				t.Fatalf("the stream is %s, want HTTP/%d", resp.Proto, tc.proto)
			}
			a.waitFor("the stream to be open", func() bool { return a.stats().HTTP.OpenStreams == 1 })
			var ids []string
			for i := range 50 {
				seq := a.publish(t, "source=tls&event=e", "m"+strconv.Itoa(i))
				ids = append(ids, strconv.FormatUint(seq, 10))
			}
			for i := range 50 {
				if ev := next(t, ch); ev.id != ids[i] || ev.data != "m"+strconv.Itoa(i) {
					t.Fatalf("event %d: %+v, want id %s", i, ev, ids[i])
				}
			}
			cancel()
			for i := 50; i < 60; i++ {
				a.publish(t, "source=tls&event=e", "m"+strconv.Itoa(i))
			}
			ch, _, err := sseWith(context.Background(), client, url, ids[49])
			if err != nil {
				t.Fatal(err)
			}
			for i := 50; i < 60; i++ {
				if ev := next(t, ch); ev.data != "m"+strconv.Itoa(i) {
					t.Fatalf("resumed after id %s: event %+v, want m%d", ids[49], ev, i)
				}
			}
			// Two more streams, on the same connection; a reload ends all three.
			chans := []<-chan sseEvent{ch}
			for range 2 {
				c, r2, err := sseWith(context.Background(), client, url, "")
				if err != nil {
					t.Fatal(err)
				}
				if r2.ProtoMajor != tc.proto {
					t.Fatalf("stream is %s", r2.Proto)
				}
				chans = append(chans, c)
			}
			a.waitFor("3 open streams", func() bool { return a.stats().HTTP.OpenStreams == 3 })
			start := time.Now()
			if out, err := cli(t, "reload", "--config", a.config, "--adapter", "caddyfile", "--address", a.admin, "--force"); err != nil {
				t.Fatalf("reload: %v\n%s", err, out)
			}
			drainAll(t, chans, time.After(30*time.Second), fmt.Sprintf("HTTP/%d reload", tc.proto))
			if took := time.Since(start); took > 2*time.Second {
				t.Fatalf("the reload took %v to end 3 HTTP/%d streams", took, tc.proto)
			}
		})
	}
}
