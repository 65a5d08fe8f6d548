package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// loadLine is the JSON line the load command prints.
type loadLine struct {
	Lib         string  `json:"lib"`
	Mode        string  `json:"mode"`
	Procs       int     `json:"procs"`
	Subscribers int     `json:"subscribers"`
	Messages    int     `json:"messages"`
	Size        int     `json:"size"`
	Rate        float64 `json:"rate"`
	Conns       int     `json:"conns"`
	Published   int     `json:"published"`
	PublishRate float64 `json:"publish_rate"`
	Received    int64   `json:"received"`
	Expected    int64   `json:"expected"`
	Lost        int64   `json:"lost"`
	ReceiptRate float64 `json:"receipts_per_s"`
	P50ms       float64 `json:"p50_ms"`
	P99ms       float64 `json:"p99_ms"`
	MaxMs       float64 `json:"max_ms"`
}

// loadMain opens S subscribers (SSE or long-poll) spread over the
// subscribe URLs, publishes M messages to the publish URLs (paced at
// -rate per second, or a burst over -conns connections), and prints
// publish → receive latency, receipts/s and lost. With -caddy it first
// starts -procs Caddy processes on one zone and uses their URLs.
func loadMain(args []string) int {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	mode := fs.String("mode", "sse", "sse, longpoll, ws (WebSocket) or h2 (SSE over HTTPS, HTTP/2)")
	subs := fs.Int("s", 1, "subscribers")
	msgs := fs.Int("m", 1000, "messages to publish")
	size := fs.Int("size", 10, "message bytes (at least 10)")
	rate := fs.Float64("rate", 0, "messages per second (0: a burst)")
	conns := fs.Int("conns", 1, "publishing connections for a burst")
	subURLs := fs.String("sub", "", "comma-separated subscribe URLs (ipcbus_poll)")
	pubURLs := fs.String("pub", "", "comma-separated publish URLs (ipcbus_broadcast)")
	caddyBin := fs.String("caddy", "", "start Caddy processes from this binary instead of -sub/-pub")
	procs := fs.Int("procs", 2, "Caddy processes to start with -caddy")
	caFile := fs.String("cacert", "", "PEM root to trust for https -sub URLs (h2; with -caddy, its internal CA's)")
	fs.Parse(args)
	if *size < 10 {
		*size = 10
	}
	if *caddyBin != "" {
		stop, sub, pub, ca, err := startCaddies(*caddyBin, *procs, *mode == "h2")
		if err != nil {
			fmt.Fprintln(os.Stderr, "load:", err)
			return 1
		}
		defer stop()
		*subURLs, *pubURLs, *caFile = sub, pub, ca
	}
	if *subURLs == "" || *pubURLs == "" {
		fmt.Fprintln(os.Stderr, "load: give -sub and -pub URLs, or -caddy BINARY")
		return 2
	}
	subList, pubList := strings.Split(*subURLs, ","), strings.Split(*pubURLs, ",")
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: *conns + 8, MaxConnsPerHost: 0}}
	if *mode == "h2" {
		c, err := h2Client(*caFile, subList)
		if err != nil {
			fmt.Fprintln(os.Stderr, "load:", err)
			return 1
		}
		client = c
	}

	var received atomic.Int64
	lat := make([][]float64, *subs)
	var ready, done sync.WaitGroup
	stop := make(chan struct{})
	var lastRecv atomic.Int64
	for i := 0; i < *subs; i++ {
		ready.Add(1)
		done.Add(1)
		go func(i int) {
			defer done.Done()
			url := subList[i%len(subList)]
			onMsg := func(data []byte) {
				now := monoNs()
				if len(data) >= 10 {
					lat[i] = append(lat[i], float64((now/1000)%1e10-unstamp(data))/1000)
				}
				received.Add(1)
				lastRecv.Store(now)
			}
			switch *mode {
			case "sse", "h2":
				subscribeSSE(client, url, &ready, stop, *msgs, onMsg)
			case "ws":
				subscribeWS(url, &ready, stop, *msgs, onMsg)
			default:
				subscribeLongPoll(client, url, &ready, stop, *msgs, onMsg)
			}
		}(i)
	}
	ready.Wait()
	time.Sleep(200 * time.Millisecond)

	body := make([]byte, *size)
	for i := 10; i < len(body); i++ {
		body[i] = 'x'
	}
	start := monoNs()
	var published atomic.Int64
	var pw sync.WaitGroup
	nconn := *conns
	if *rate > 0 {
		nconn = 1
	}
	for c := 0; c < nconn; c++ {
		pw.Add(1)
		go func(c int) {
			defer pw.Done()
			pub, err := newRawPublisher(pubList[c%len(pubList)])
			if err != nil {
				fmt.Fprintln(os.Stderr, "publisher:", err)
				return
			}
			defer pub.close()
			b := make([]byte, len(body))
			copy(b, body)
			for i := c; i < *msgs; i += nconn {
				if *rate > 0 {
					due := start + int64(float64(i)/(*rate)*1e9)
					if d := due - monoNs(); d > 0 {
						time.Sleep(time.Duration(d))
					}
				}
				stamp(b, monoNs()/1000)
				if pub.post(b) {
					published.Add(1)
				}
			}
		}(c)
	}
	pw.Wait()
	pubEnd := monoNs()
	expected := int64(*subs) * published.Load()
	for last, idle := int64(-1), 0; received.Load() < expected && idle < 30; idle++ {
		time.Sleep(100 * time.Millisecond)
		if n := received.Load(); n != last {
			last, idle = n, 0
		}
	}
	close(stop)
	var all []float64
	for _, l := range lat {
		all = append(all, l...)
	}
	sortFloats(all)
	line := loadLine{
		Lib: "ipcbus-http", Mode: *mode, Procs: len(subList), Subscribers: *subs, Messages: *msgs, Size: *size, Rate: *rate, Conns: nconn,
		Published: int(published.Load()), PublishRate: float64(published.Load()) / (float64(pubEnd-start) / 1e9),
		Received: received.Load(), Expected: expected, Lost: expected - received.Load(),
		ReceiptRate: float64(received.Load()) / (float64(lastRecv.Load()-start) / 1e9),
		P50ms:       pctF(all, 50), P99ms: pctF(all, 99), MaxMs: pctF(all, 100),
	}
	b, _ := json.Marshal(line)
	fmt.Println(string(b))
	return 0
}

// rawPublisher is a keep-alive HTTP/1.1 connection that writes POST
// requests itself and reads the answers with http.ReadResponse: no
// http.Client machinery, so the publisher costs little CPU (the method of
// the nchan figures in peers-http.md).
type rawPublisher struct {
	conn net.Conn
	br   *bufio.Reader
	head []byte
}

func newRawPublisher(rawURL string) (*rawPublisher, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		return nil, err
	}
	head := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: text/plain\r\nContent-Length: ", u.RequestURI(), u.Host)
	return &rawPublisher{conn: conn, br: bufio.NewReader(conn), head: []byte(head)}, nil
}

func (p *rawPublisher) post(body []byte) bool {
	req := append(append(append(p.head[:len(p.head):len(p.head)], strconv.Itoa(len(body))...), "\r\n\r\n"...), body...)
	if _, err := p.conn.Write(req); err != nil {
		return false
	}
	resp, err := http.ReadResponse(p.br, nil)
	if err != nil {
		return false
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func (p *rawPublisher) close() { p.conn.Close() }

func subscribeSSE(client *http.Client, url string, ready *sync.WaitGroup, stop chan struct{}, want int, onMsg func([]byte)) {
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := client.Do(req)
	ready.Done()
	if err != nil {
		fmt.Fprintln(os.Stderr, "subscriber:", err)
		return
	}
	go func() { <-stop; resp.Body.Close() }()
	sc := bufio.NewScanner(resp.Body)
	n := 0
	for sc.Scan() {
		if l := sc.Bytes(); bytes.HasPrefix(l, []byte("data: ")) {
			onMsg(l[6:])
			if n++; n == want {
				resp.Body.Close()
				return
			}
		}
	}
}

func subscribeLongPoll(client *http.Client, url string, ready *sync.WaitGroup, stop chan struct{}, want int, onMsg func([]byte)) {
	// Learn "now" first, so that no message is missed.
	var page struct {
		Events []struct {
			Data json.RawMessage `json:"data"`
		} `json:"events"`
		Next uint64 `json:"next"`
	}
	get := func(u string) bool {
		resp, err := client.Get(u)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		page.Events = nil
		return json.NewDecoder(resp.Body).Decode(&page) == nil
	}
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	ok := get(url + sep + "timeout=0")
	ready.Done()
	if !ok {
		return
	}
	for n := 0; n < want; {
		select {
		case <-stop:
			return
		default:
		}
		if !get(fmt.Sprintf("%s%ssince=%d&timeout=30s&limit=10000", url, sep, page.Next)) {
			return
		}
		for _, e := range page.Events {
			var s string
			if json.Unmarshal(e.Data, &s) == nil {
				onMsg([]byte(s))
			} else {
				onMsg(e.Data)
			}
			n++
		}
	}
}

// startCaddies runs procs Caddy processes on a fresh zone, each with its own
// admin address and site port, and returns their subscribe and publish URLs;
// with https, the subscribe URLs are those of an HTTPS site of Caddy's
// internal CA (HTTP/2), whose root it returns too.
func startCaddies(bin string, procs int, https bool) (func(), string, string, string, error) {
	dir, err := os.MkdirTemp(defaultDir(), "ipcbus-load-")
	if err != nil {
		return nil, "", "", "", err
	}
	var cmds []*exec.Cmd
	stop := func() {
		for _, c := range cmds {
			c.Process.Signal(os.Interrupt)
			c.Wait()
		}
		os.RemoveAll(dir)
	}
	var sub, pub []string
	for i := 0; i < procs; i++ {
		admin, site, tlsSite := freeTCPPort(), freeTCPPort(), freeTCPPort()
		global, sites := "", ""
		if https {
			global = "local_certs\n\tskip_install_trust\n\tauto_https disable_redirects"
			sites = fmt.Sprintf(`https://127.0.0.1:%d {
	tls internal
	handle /events {
		ipcbus_poll {
			max_streams 20000
		}
	}
}`, tlsSite)
		}
		cfg := fmt.Sprintf(`{
	admin 127.0.0.1:%d
	persist_config off
	%s
	ipcbus {
		zone load
		dir %s
	}
}
%s
http://127.0.0.1:%d {
	handle /events {
		ipcbus_poll {
			max_streams 20000
			limit 10000
		}
	}
	handle /publish {
		ipcbus_broadcast load msg {
			max_size 64MiB
		}
	}
}
`, admin, global, dir, sites, site)
		path := filepath.Join(dir, "Caddyfile"+strconv.Itoa(i))
		os.WriteFile(path, []byte(cfg), 0o600)
		cmd := exec.Command(bin, "run", "--config", path, "--adapter", "caddyfile")
		cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir)
		if err := cmd.Start(); err != nil {
			stop()
			return nil, "", "", "", err
		}
		cmds = append(cmds, cmd)
		base := fmt.Sprintf("http://127.0.0.1:%d", site)
		for t := time.Now(); time.Since(t) < 30*time.Second; time.Sleep(50 * time.Millisecond) {
			if resp, err := http.Get(base + "/events?timeout=0"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
		}
		if https {
			sub = append(sub, fmt.Sprintf("https://127.0.0.1:%d/events?source=load", tlsSite))
		} else {
			sub = append(sub, base+"/events?source=load")
		}
		pub = append(pub, base+"/publish")
	}
	ca := ""
	if https {
		ca = filepath.Join(dir, "caddy", "pki", "authorities", "local", "root.crt")
	}
	return stop, strings.Join(sub, ","), strings.Join(pub, ","), ca, nil
}

func freeTCPPort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func sortFloats(v []float64) { sort.Float64s(v) }

func pctF(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	return v[int(float64(len(v)-1)*p/100)]
}
