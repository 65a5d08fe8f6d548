package ipcbus

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/ipcbus/caddy-ipcbus/ipc"
)

// webhook POSTs the alerts of an on_alert webhook action from a goroutine
// of its own, one at a time, with bounded retries and a timeout per
// attempt (see OnAlert.URL).
type webhook struct {
	o      *OnAlert
	client *http.Client
	q      *queue[hookAlert]
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	log    *zap.Logger
}

// hookAlert is a queued alert, its data copied.
type hookAlert struct {
	name   string
	data   []byte
	sender int
	seq    uint64
	toAll  bool
}

func startWebhook(o *OnAlert, log *zap.Logger) *webhook {
	h := &webhook{o: o, client: &http.Client{}, q: newQueue[hookAlert](o.QueueSize, o.QueueBytes), done: make(chan struct{}), log: log.With(zap.String("url", o.URL))}
	h.ctx, h.cancel = context.WithCancel(context.Background())
	go h.run()
	return h
}

// enqueue queues a copy of the alert; it never blocks.
func (h *webhook) enqueue(al *ipc.Alert) {
	a := hookAlert{name: al.Name, data: bytes.Clone(al.Data), sender: al.Sender, seq: al.Seq, toAll: al.ToAll}
	if !h.q.push(a, int64(len(a.data))) && countDrop(&reactionCounters.hookDropped, 1) {
		h.log.Warn("on_alert webhook: dropped an alert, the queue is full (or the alert is larger than queue_bytes)",
			zap.String("alert", al.Name), zap.Int("size", len(al.Data)), zap.Uint64("webhook_dropped", reactionCounters.hookDropped.Load()))
	}
}

func (h *webhook) run() {
	defer close(h.done)
	h.q.serve(h.ctx, h.deliver, &reactionCounters.hookDropped, h.log, "on_alert webhook: the worker stopped before these alerts were sent")
}

// deliver tries one alert up to Attempts times, waiting Backoff (doubled
// each time, at most MaxWebhookBackoff) between attempts.
func (h *webhook) deliver(a hookAlert) {
	wait := time.Duration(h.o.Backoff)
	var err error
	for attempt := 1; attempt <= h.o.Attempts; attempt++ {
		if attempt > 1 {
			reactionCounters.hookRetries.Add(1)
			t := time.NewTimer(wait)
			select {
			case <-h.ctx.Done():
				t.Stop()
				reactionCounters.hookDropped.Add(1)
				return
			case <-t.C:
			}
			wait = min(2*wait, MaxWebhookBackoff)
		}
		var retry bool
		retry, err = h.attempt(a, attempt)
		if err == nil {
			reactionCounters.hookSent.Add(1)
			if ce := h.log.Check(zap.DebugLevel, "on_alert webhook: sent"); ce != nil {
				ce.Write(zap.String("alert", a.name), zap.Int("attempt", attempt))
			}
			return
		}
		if h.ctx.Err() != nil {
			reactionCounters.hookDropped.Add(1)
			return
		}
		if !retry {
			break
		}
		h.log.Warn("on_alert webhook: attempt failed", zap.String("alert", a.name), zap.Int("attempt", attempt), zap.Int("attempts", h.o.Attempts), zap.Error(err))
	}
	reactionCounters.hookFailed.Add(1)
	h.log.Error("on_alert webhook: alert not delivered", zap.String("alert", a.name), zap.Int("sender", a.sender), zap.Uint64("seq", a.seq), zap.Error(err))
}

// attempt POSTs the alert once; retry reports an error worth retrying.
func (h *webhook) attempt(a hookAlert, n int) (retry bool, err error) {
	ctx, cancel := context.WithTimeout(h.ctx, time.Duration(h.o.Timeout))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.o.URL, bytes.NewReader(a.data))
	if err != nil {
		return false, fmt.Errorf("making the request: %w", err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("X-Ipcbus-Alert", url.QueryEscape(a.name))
	req.Header.Set("X-Ipcbus-Sender", strconv.Itoa(a.sender))
	req.Header.Set("X-Ipcbus-Seq", strconv.FormatUint(a.seq, 10))
	req.Header.Set("X-Ipcbus-Broadcast", strconv.FormatBool(a.toAll))
	req.Header.Set("X-Ipcbus-Attempt", strconv.Itoa(n))
	resp, err := h.client.Do(req)
	if err != nil {
		return true, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // lets the connection be reused
	resp.Body.Close()
	switch c := resp.StatusCode; {
	case c >= 200 && c < 300:
		return false, nil
	case c == http.StatusRequestTimeout || c == http.StatusTooManyRequests || c >= 500:
		return true, fmt.Errorf("answered %s", resp.Status)
	default:
		return false, fmt.Errorf("answered %s (not retried)", resp.Status)
	}
}

// stop ends the goroutine: an attempt under way is cancelled, and what is
// queued is dropped and counted.
func (h *webhook) stop() {
	h.cancel()
	<-h.done
}
