package ipcbus

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap/zapcore"

	"github.com/ipcbus/caddy-ipcbus/handlers"
)

// The actions of on_alert.
const (
	ActionReload  = "reload"
	ActionLog     = "log"
	ActionPost    = "post"
	ActionWebhook = "webhook"
)

// Defaults of a webhook action.
const (
	DefaultWebhookTimeout    = 5 * time.Second
	DefaultWebhookAttempts   = 4
	DefaultWebhookBackoff    = 500 * time.Millisecond
	DefaultWebhookQueue      = 64
	DefaultWebhookQueueBytes = 16 << 20
	// MaxWebhookAttempts bounds attempts; MaxWebhookBackoff the wait
	// between two attempts, however often it has doubled.
	MaxWebhookAttempts = 10
	MaxWebhookBackoff  = 30 * time.Second
)

// OnAlert is an action this process runs when it receives an IPC alert
// (one sent to its pid, or broadcast to every process) whose name
// matches. Actions run on the alerts' delivery goroutine and never block
// it for long: reload only signals, log writes a line, post writes to the
// ring, webhook queues. An alert that an action (or emit, or an
// ipcbus_poll alerts stream) takes is counted received, not unhandled.
type OnAlert struct {
	// Name of the alerts the action runs for: an exact name, or a prefix
	// ending in "*" ("cert-*"); "*" is every alert. Required.
	Name string `json:"name,omitempty"`

	// Action is what to do: "reload" (this process reloads its config
	// from its source, as SIGUSR1 does to `caddy run`: the config file
	// and adapter it was started with are read and adapted again, and
	// loaded even if unchanged), "log" (a log line with the alert's name,
	// sender and data), "post" (an event on the bus, which every worker
	// and every ipcbus_poll subscriber of the node sees, with the alert's
	// data as payload) or "webhook" (POST the alert's data to url).
	// Required.
	Action string `json:"action,omitempty"`

	// Level of the log line, for log: "debug", "info", "warn" or "error".
	// Default: "info".
	Level string `json:"level,omitempty"`

	// Source and Event of the bus event, for post. Required for post. The
	// reserved sources (ipcbus, ipcbus.*, caddy) are refused. A broadcast
	// alert is posted once for the node (a run-once key made of the
	// alert's sequence number), not once per process that receives it.
	Source string `json:"source,omitempty"`
	Event  string `json:"event,omitempty"`

	// URL the webhook POSTs to, http or https. Required for webhook. The
	// body is the alert's data; the headers X-Ipcbus-Alert (the name,
	// percent-encoded), X-Ipcbus-Sender (pid), X-Ipcbus-Seq,
	// X-Ipcbus-Broadcast (true or false) and X-Ipcbus-Attempt (1, 2…)
	// describe it. A 2xx answer is success; a network error, a timeout,
	// 408, 429 or a 5xx is retried; any other status fails at once.
	URL string `json:"url,omitempty"`

	// Timeout of one webhook attempt. Default: 5s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Attempts is how many times a webhook tries one alert, the first
	// included: 1 to 10. Default: 4.
	Attempts int `json:"attempts,omitempty"`

	// Backoff is the wait before the second attempt; it doubles before
	// each next one, up to 30s. Default: 500ms.
	Backoff caddy.Duration `json:"backoff,omitempty"`

	// QueueSize bounds the alerts waiting for the webhook (one is sent
	// at a time, retries included); when it is full, or QueueBytes would
	// be passed, an alert is dropped and counted (webhook_dropped in
	// /ipcbus/stats). Default: 64.
	QueueSize int `json:"queue_size,omitempty"`

	// QueueBytes bounds the data of the alerts waiting for the webhook.
	// Default: 16MiB. An alert larger than it is never sent.
	QueueBytes int64 `json:"queue_bytes,omitempty"`

	level zapcore.Level
}

// matchName reports whether name matches a pattern: exact, or a prefix
// ending in "*" ("*" alone matches everything).
func matchName(pattern, name string) bool { return handlers.MatchAlertName(pattern, name) }

// checkAlertPattern checks an alert name pattern; what names the setting.
func checkAlertPattern(what, p string) error {
	if err := handlers.CheckAlertPattern(p); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// setDefaults fills in the documented defaults of the action.
func (o *OnAlert) setDefaults() {
	if o.Action == ActionLog && o.Level == "" {
		o.Level = "info"
	}
	if o.Action != ActionWebhook {
		return
	}
	if o.Timeout == 0 {
		o.Timeout = caddy.Duration(DefaultWebhookTimeout)
	}
	if o.Attempts == 0 {
		o.Attempts = DefaultWebhookAttempts
	}
	if o.Backoff == 0 {
		o.Backoff = caddy.Duration(DefaultWebhookBackoff)
	}
	if o.QueueSize == 0 {
		o.QueueSize = DefaultWebhookQueue
	}
	if o.QueueBytes == 0 {
		o.QueueBytes = DefaultWebhookQueueBytes
	}
}

// validate checks the action; i numbers it in the messages.
func (o *OnAlert) validate(i int) error {
	what := fmt.Sprintf("on_alert %d (%q)", i, o.Name)
	if err := checkAlertPattern(what, o.Name); err != nil {
		return err
	}
	unused := func(fields ...string) error {
		for _, f := range fields {
			var set bool
			switch f {
			case "level":
				set = o.Level != ""
			case "source/event":
				set = o.Source != "" || o.Event != ""
			case "url":
				set = o.URL != ""
			case "webhook settings":
				set = o.Timeout != 0 || o.Attempts != 0 || o.Backoff != 0 || o.QueueSize != 0 || o.QueueBytes != 0
			}
			if set {
				return fmt.Errorf("%s: action %s takes no %s", what, o.Action, f)
			}
		}
		return nil
	}
	switch o.Action {
	case ActionReload:
		return unused("level", "source/event", "url", "webhook settings")
	case ActionLog:
		lvl, err := zapcore.ParseLevel(o.Level)
		if err != nil || lvl < zapcore.DebugLevel || lvl > zapcore.ErrorLevel {
			return fmt.Errorf("%s: log level %q: use debug, info, warn or error", what, o.Level)
		}
		o.level = lvl
		return unused("source/event", "url", "webhook settings")
	case ActionPost:
		for _, s := range []struct{ what, v string }{{"source", o.Source}, {"event", o.Event}} {
			if err := handlers.CheckName(s.what, s.v); err != nil {
				return fmt.Errorf("%s: post needs a source and an event: %w", what, err)
			}
		}
		if handlers.IsReservedSource(o.Source) {
			return fmt.Errorf("%s: post: source %q is reserved for the server's own events (ipcbus, ipcbus.*, caddy and the sources of ipcbus_forward); choose another", what, o.Source)
		}
		if strings.HasPrefix(o.Event, handlers.ReservedPrefix) {
			return fmt.Errorf("%s: post: event names starting with %q are reserved for the server's notices; choose another", what, handlers.ReservedPrefix)
		}
		return unused("level", "url", "webhook settings")
	case ActionWebhook:
		u, err := url.Parse(o.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("%s: webhook url %q: give an absolute http or https URL, like http://127.0.0.1:9000/alerts", what, o.URL)
		}
		switch {
		case o.Timeout <= 0 || o.Backoff <= 0:
			return fmt.Errorf("%s: webhook timeout and backoff must be positive", what)
		case o.Attempts < 1 || o.Attempts > MaxWebhookAttempts:
			return fmt.Errorf("%s: webhook attempts %d: give 1 to %d (the first attempt included)", what, o.Attempts, MaxWebhookAttempts)
		case o.QueueSize < 1 || o.QueueBytes < 1:
			return fmt.Errorf("%s: webhook queue_size and queue_bytes must be at least 1", what)
		}
		return unused("level", "source/event")
	case "":
		return fmt.Errorf("%s: no action; use reload, log, post or webhook", what)
	}
	return fmt.Errorf("%s: unknown action %q; use reload, log, post or webhook", what, o.Action)
}
