package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// subscribeWS reads want messages from a WebSocket of ipcbus_poll (one
// message per event, the payload as posted), each into one reused buffer;
// stop closes the connection.
func subscribeWS(url string, ready *sync.WaitGroup, stop chan struct{}, want int, onMsg func([]byte)) {
	ctx := context.Background() // no timer per read: stop closes the socket
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(url, "http"), nil)
	ready.Done()
	if err != nil {
		fmt.Fprintln(os.Stderr, "subscriber:", err)
		return
	}
	defer c.CloseNow()
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-stop:
			c.CloseNow()
		case <-done:
		}
	}()
	buf := make([]byte, 0, 4096)
	for n := 0; n < want; n++ {
		_, r, err := c.Reader(ctx)
		if err != nil {
			return
		}
		buf = buf[:0]
		for {
			if len(buf) == cap(buf) {
				buf = append(buf, 0)[:len(buf)]
			}
			k, err := r.Read(buf[len(buf):cap(buf)])
			buf = buf[:len(buf)+k]
			if err == io.EOF {
				break
			}
			if err != nil {
				return
			}
		}
		onMsg(buf)
	}
	c.Close(websocket.StatusNormalClosure, "")
}

// h2Client is an HTTP/2 client trusting the PEM root in caFile (none: the
// system's), once the first subscribe URL answers over HTTP/2 (a Caddy
// just started may still be getting its certificate).
func h2Client(caFile string, subs []string) (*http.Client, error) {
	cfg := &tls.Config{}
	deadline := time.Now().Add(30 * time.Second)
	if caFile != "" {
		var pem []byte
		for {
			var err error
			if pem, err = os.ReadFile(caFile); err == nil && len(pem) > 0 {
				break
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("reading the root %s: %w", caFile, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no certificate in %s", caFile)
		}
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}}
	for _, u := range subs {
		for {
			sep := "?"
			if strings.Contains(u, "?") {
				sep = "&"
			}
			resp, err := client.Get(u + sep + "timeout=0")
			if err == nil {
				resp.Body.Close()
				if resp.ProtoMajor != 2 {
					return nil, fmt.Errorf("%s answers %s, not HTTP/2", u, resp.Proto)
				}
				break
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("%s: %w", u, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return client, nil
}
