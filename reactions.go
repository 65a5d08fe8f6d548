package ipcbus

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"go.uber.org/zap"

	"github.com/ipcbus/caddy-ipcbus/events"
	"github.com/ipcbus/caddy-ipcbus/handlers"
	"github.com/ipcbus/caddy-ipcbus/ipc"
)

// ReactionStats are this process's counters of the app's reactions to
// alerts and events (on_alert, emit), over every worker it has run.
type ReactionStats struct {
	// Actions counts on_alert actions run (a webhook: queued).
	Actions uint64 `json:"actions"`
	// Reloads counts reloads asked for by on_alert reload.
	Reloads uint64 `json:"reloads"`
	// Posted and PostErrors count on_alert post events posted and refused
	// (a broadcast alert already posted by another process is neither).
	Posted     uint64 `json:"posted"`
	PostErrors uint64 `json:"post_errors"`
	// WebhookSent counts alerts a webhook delivered (a 2xx answer),
	// WebhookRetries the attempts after a first, WebhookFailed the alerts
	// given up after every attempt or a final status, WebhookDropped those
	// dropped for a full queue or a worker that stopped first.
	WebhookSent    uint64 `json:"webhook_sent"`
	WebhookRetries uint64 `json:"webhook_retries"`
	WebhookFailed  uint64 `json:"webhook_failed"`
	WebhookDropped uint64 `json:"webhook_dropped"`
	// Emitted counts events emitted into Caddy's events app; EmitDropped
	// those dropped for a full queue or a worker that stopped first.
	Emitted     uint64 `json:"emitted"`
	EmitDropped uint64 `json:"emit_dropped"`
}

// reactionCounters are per process (like the handlers' counters): every
// worker of the process adds to them.
var reactionCounters struct {
	actions, reloads, posted, postErrors, hookSent, hookRetries, hookFailed, hookDropped, emitted, emitDropped atomic.Uint64
}

func readReactionStats() ReactionStats {
	c := &reactionCounters
	return ReactionStats{
		Actions: c.actions.Load(), Reloads: c.reloads.Load(), Posted: c.posted.Load(), PostErrors: c.postErrors.Load(),
		WebhookSent: c.hookSent.Load(), WebhookRetries: c.hookRetries.Load(), WebhookFailed: c.hookFailed.Load(), WebhookDropped: c.hookDropped.Load(),
		Emitted: c.emitted.Load(), EmitDropped: c.emitDropped.Load(),
	}
}

// reactions is a started worker's observer of its alerts and its
// subscriber on the bus: it runs the on_alert actions and emits into
// Caddy's events app. stop ends its goroutines.
type reactions struct {
	actions   []*OnAlert
	hooks     map[*OnAlert]*webhook
	emitNames []string
	emitEvs   []eventPattern
	em        *emitter
	bus       *events.Bus
	log       *zap.Logger
}

// newReactions starts the goroutines of a worker's reactions (emitter,
// webhooks), if any are configured.
func (a *App) newReactions(bus *events.Bus) *reactions {
	if len(a.OnAlert) == 0 && a.Emit == nil {
		return &reactions{bus: bus, log: a.logger}
	}
	r := &reactions{actions: a.OnAlert, hooks: map[*OnAlert]*webhook{}, bus: bus, log: a.logger}
	for _, o := range a.OnAlert {
		if o.Action == ActionWebhook {
			r.hooks[o] = startWebhook(o, a.logger.Named("webhook"))
		}
	}
	if a.Emit != nil && a.events != nil {
		r.emitNames, r.emitEvs = a.Emit.Alerts, a.emitEvents
		r.em = startEmitter(a.ctx, a.events, a.Emit, a.logger.Named("emit"))
		if len(r.emitEvs) > 0 {
			bus.Register(r.busEvent, "")
		}
	}
	return r
}

// stop ends the goroutines; what they had not done yet is dropped and counted.
func (r *reactions) stop() {
	if r == nil {
		return
	}
	for _, h := range r.hooks {
		h.stop()
	}
	if r.em != nil {
		r.em.stop()
	}
}

// Wants reports whether an action, emit or an ipcbus_poll alerts stream
// takes alerts named name.
func (r *reactions) Wants(name string) bool {
	for _, o := range r.actions {
		if matchName(o.Name, name) {
			return true
		}
	}
	for _, p := range r.emitNames {
		if matchName(p, name) {
			return true
		}
	}
	return handlers.AlertStreamsWant(name)
}

// Alert runs the matching actions, then queues the emission.
func (r *reactions) Alert(al *ipc.Alert) {
	for _, o := range r.actions {
		if !matchName(o.Name, al.Name) {
			continue
		}
		reactionCounters.actions.Add(1)
		switch o.Action {
		case ActionLog:
			if ce := r.log.Check(o.level, "alert received"); ce != nil {
				ce.Write(alertFields(al)...)
			}
		case ActionPost:
			r.post(o, al)
		case ActionReload:
			reloadSelf(r.log, al)
		case ActionWebhook:
			r.hooks[o].enqueue(al)
		}
	}
	if r.em == nil {
		return
	}
	for _, p := range r.emitNames {
		if matchName(p, al.Name) {
			data := map[string]any{"name": al.Name, "size": len(al.Data), "pid": al.Sender, "generation": al.SenderGeneration, "broadcast": al.ToAll, "seq": al.Seq}
			putData(data, al.Data)
			r.em.enqueue(EmitAlertEvent, data, int64(len(al.Data)))
			return
		}
	}
}

// logDataMax bounds the data a log line shows.
const logDataMax = 1024

func alertFields(al *ipc.Alert) []zap.Field {
	d := al.Data
	cut := len(d) > logDataMax
	if cut {
		d = d[:logDataMax]
	}
	f := []zap.Field{zap.String("name", al.Name), zap.Int("sender", al.Sender), zap.Int("generation", al.SenderGeneration),
		zap.Bool("broadcast", al.ToAll), zap.Uint64("seq", al.Seq), zap.Int("size", len(al.Data))}
	if utf8.Valid(d) || cut {
		f = append(f, zap.ByteString("data", d))
	} else {
		f = append(f, zap.String("data_base64", base64.StdEncoding.EncodeToString(d)))
	}
	if cut {
		f = append(f, zap.Bool("data_truncated", true))
	}
	return f
}

// post puts the alert on the bus as an event of the action's source and
// name: a broadcast alert once for the node (the first process to post
// its run-once key wins).
func (r *reactions) post(o *OnAlert, al *ipc.Alert) {
	var opts []events.PostOption
	if al.ToAll {
		opts = append(opts, events.Unique("ipcbus.alert."+strconv.FormatUint(al.Seq, 10)))
	}
	var data any = al.Data
	if json.Valid(al.Data) {
		data = json.RawMessage(al.Data)
	}
	if _, err := r.bus.Post(o.Source, o.Event, data, opts...); err != nil {
		if errors.Is(err, events.ErrDuplicate) {
			return // another process posted this broadcast
		}
		n := reactionCounters.postErrors.Add(1)
		if n&(n-1) == 0 {
			r.log.Warn("on_alert post: the event could not be posted", zap.String("alert", al.Name), zap.String("source", o.Source), zap.String("event", o.Event), zap.Error(err), zap.Uint64("post_errors", n))
		}
		return
	}
	reactionCounters.posted.Add(1)
}

// runsCaddyRun reports whether this process runs Caddy's `run` command,
// which traps SIGUSR1 (elsewhere, as in a test binary or a program that
// embeds Caddy without trapping signals, SIGUSR1 would end the process).
var runsCaddyRun = func() bool { return len(os.Args) > 1 && os.Args[1] == "run" }

// reloadSelf asks Caddy to reload this process's config from its source:
// it sends SIGUSR1 to this process, on which `caddy run` reads and adapts
// again the config file it was started with (--config, --adapter) and
// loads it even if unchanged. When the config has since been replaced
// through the admin API from another source, Caddy knows no file and
// ignores the signal (it logs "last config unknown"). The reload runs on
// Caddy's signal goroutine, not on the alerts' delivery goroutine.
func reloadSelf(log *zap.Logger, al *ipc.Alert) {
	if !runsCaddyRun() {
		log.Error("on_alert reload: this process was not started with `caddy run`, so it has no config file to reload from; nothing done", zap.String("alert", al.Name), zap.Int("sender", al.Sender))
		return
	}
	reactionCounters.reloads.Add(1)
	log.Info("on_alert reload: reloading the config from its source file", zap.String("alert", al.Name), zap.Int("sender", al.Sender))
	if err := syscall.Kill(os.Getpid(), syscall.SIGUSR1); err != nil {
		log.Error("on_alert reload: signalling this process", zap.Error(err))
	}
}

// busEvent queues a matching shared bus event for emission.
func (r *reactions) busEvent(e *events.Event) {
	if e.Local {
		return
	}
	for _, p := range r.emitEvs {
		if p.matches(e.Source, e.Name) {
			data := map[string]any{"source": e.Source, "event": e.Name, "size": len(e.Data), "pid": e.PID, "generation": e.Generation, "seq": e.Seq, "time": e.Time}
			if e.Unique != "" {
				data["unique"] = e.Unique
			}
			putData(data, e.Data)
			r.em.enqueue(EmitBusEvent, data, int64(len(e.Data)))
			return
		}
	}
}

// putData sets data (a copy, as a string when it is UTF-8 text, else its
// base64 with data_encoding "base64").
func putData(m map[string]any, b []byte) {
	if utf8.Valid(b) {
		m["data"] = string(b)
		return
	}
	m["data"] = base64.StdEncoding.EncodeToString(b)
	m["data_encoding"] = handlers.EncodingBase64
}

// emitter emits into Caddy's events app from a goroutine of its own (see
// Emit).
type emitter struct {
	q      *queue[emitted]
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	log    *zap.Logger
}

type emitted struct {
	name string
	data map[string]any
}

func startEmitter(ctx caddy.Context, ev *caddyevents.App, o *Emit, log *zap.Logger) *emitter {
	e := &emitter{q: newQueue[emitted](o.QueueSize, o.QueueBytes), done: make(chan struct{}), log: log}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	go e.run(ctx, ev)
	return e
}

func (e *emitter) run(ctx caddy.Context, ev *caddyevents.App) {
	defer close(e.done)
	e.q.serve(e.ctx, func(x emitted) {
		ev.Emit(ctx, x.name, x.data)
		reactionCounters.emitted.Add(1)
	}, &reactionCounters.emitDropped, e.log, "the worker stopped before these events were emitted")
}

// enqueue queues an event for emission; it never blocks.
func (e *emitter) enqueue(name string, data map[string]any, size int64) {
	if !e.q.push(emitted{name, data}, size) && countDrop(&reactionCounters.emitDropped, 1) {
		e.log.Warn("dropped an event instead of emitting it: the emit queue is full (slow events handlers?)",
			zap.String("event", name), zap.Uint64("emit_dropped", reactionCounters.emitDropped.Load()))
	}
}

func (e *emitter) stop() {
	e.cancel()
	<-e.done
}

// Interface guard
var _ ipc.Observer = (*reactions)(nil)
