package integration

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
)

// post sends body to a site path of p and returns the status and the body.
func (p *proc) postSite(t *testing.T, path, contentType string, body []byte) (int, string) {
	t.Helper()
	resp, err := http.Post(p.url(path), contentType, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metrics returns p's Prometheus metrics.
func (p *proc) metrics(t *testing.T) string {
	t.Helper()
	resp, err := http.Get("http://" + p.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// blobBytes sums the sizes of the zone's blob files.
func (n *node) blobBytes(t *testing.T) int64 {
	t.Helper()
	ents, err := os.ReadDir(n.zoneDir())
	if err != nil {
		t.Fatal(err)
	}
	var sum int64
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), n.zone+".blob-") && !strings.HasSuffix(e.Name(), ".blob-usage") {
			if fi, err := e.Info(); err == nil {
				sum += fi.Size()
			}
		}
	}
	return sum
}

// TestBlobQuota: the blob quota holds node-wide, over two processes, for
// events and alerts: beyond it a post fails with an error that names no
// file, the refusal is counted in stats and metrics, and the blob files
// never hold more than the quota.
func TestBlobQuota(t *testing.T) {
	n := newNode(t)
	n.settings = "max_payload 512KiB\n\t\tblob_quota 1MiB"
	a, b := n.start(), n.start()
	body := bytes.Repeat([]byte("x"), 400<<10)
	for i, p := range []*proc{a, b} {
		if status, answer := p.postSite(t, "/publish?source=q&event=e", "text/plain", body); status != http.StatusOK {
			t.Fatalf("post %d within the quota: %d %s", i, status, answer)
		}
	}
	refusals := []struct {
		p    *proc
		path string
	}{
		{a, "/publish?source=q&event=e"}, // an event: 1200 KiB > 1 MiB
		{b, "/alert?name=big"},           // an alert broadcast meets the same quota
	}
	for _, r := range refusals {
		status, answer := r.p.postSite(t, r.path, "text/plain", body)
		if status != http.StatusInsufficientStorage {
			t.Fatalf("%s over the quota: %d %s", r.path, status, answer)
		}
		if !strings.Contains(answer, "blob quota exceeded") || strings.Contains(answer, n.dir) || strings.Contains(answer, "/") {
			t.Fatalf("%s over the quota answered %s: want the quota named, and no path", r.path, answer)
		}
	}
	if got := n.blobBytes(t); got > 1<<20 || got != 2*int64(len(body)) {
		t.Fatalf("blob files hold %d bytes, want the two accepted posts' %d", got, 2*len(body))
	}
	if st := a.stats(); st.Events.BlobQuotaExceeded != 1 {
		t.Fatalf("stats of the refusing process: %+v", st.Events)
	}
	if st := b.stats(); st.Alerts.BlobQuotaExceeded != 1 {
		t.Fatalf("alert stats of the refusing process: %+v", st.Alerts)
	}
	m := b.metrics(t)
	for _, want := range []string{
		"caddy_ipcbus_blob_quota_exceeded_total 1",
		fmt.Sprintf("caddy_ipcbus_blob_bytes %d", 2*len(body)),
		"caddy_ipcbus_blob_quota_bytes 1.048576e+06",
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// Small payloads travel in the ring and are not held back.
	if status, answer := a.postSite(t, "/publish?source=q&event=small", "text/plain", []byte("hello")); status != http.StatusOK {
		t.Fatalf("a small post with the quota full: %d %s", status, answer)
	}
}
