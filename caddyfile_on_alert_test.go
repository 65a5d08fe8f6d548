package ipcbus

import "testing"

// TestOnAlertCaddyfile: the on_alert and emit settings of the ipcbus
// global option become the app's JSON, and bad ones are refused with
// what is wrong and what is allowed.
func TestOnAlertCaddyfile(t *testing.T) {
	tests := []struct {
		in   string
		want string // JSON of the app, or an error substring after "error: "
	}{
		{`ipcbus {
			on_alert reload-certs reload
			on_alert cert-* log warn
			on_alert * log
			on_alert deploy post ops deployed
			on_alert deploy webhook http://127.0.0.1:9000/hook
		}`, `{"on_alert":[{"name":"reload-certs","action":"reload"},{"name":"cert-*","action":"log","level":"warn"},{"name":"*","action":"log"},{"name":"deploy","action":"post","source":"ops","event":"deployed"},{"name":"deploy","action":"webhook","url":"http://127.0.0.1:9000/hook"}]}`},
		{`ipcbus {
			on_alert x webhook https://backend.internal/a {
				timeout 2s
				attempts 6
				backoff 100ms
				queue_size 10
				queue_bytes 1MiB
			}
		}`, `{"on_alert":[{"name":"x","action":"webhook","url":"https://backend.internal/a","timeout":2000000000,"attempts":6,"backoff":100000000,"queue_size":10,"queue_bytes":1048576}]}`},
		{`ipcbus {
			emit {
				alerts deploy cert-*
				events chat ipcbus.workers/worker_crashed
				queue_size 10
				queue_bytes 1MiB
			}
		}`, `{"emit":{"alerts":["deploy","cert-*"],"events":["chat","ipcbus.workers/worker_crashed"],"queue_size":10,"queue_bytes":1048576}}`},
		{`ipcbus {
			on_alert x
		}`, `error: on_alert needs an alert name (or a prefix ending in *) and an action`},
		{`ipcbus {
			on_alert x restart
		}`, `error: on_alert x: unknown action "restart"; use reload, log, post or webhook`},
		{`ipcbus {
			on_alert x reload now
		}`, `error: on_alert x reload: takes no argument`},
		{`ipcbus {
			on_alert x log loud
		}`, `error: log level "loud": use debug, info, warn or error`},
		{`ipcbus {
			on_alert x log fatal
		}`, `error: log level "fatal": use debug, info, warn or error`},
		{`ipcbus {
			on_alert x post ops
		}`, `error: on_alert x post: needs exactly a source and an event`},
		{`ipcbus {
			on_alert x post ipcbus.workers started
		}`, `error: post: source "ipcbus.workers" is reserved`},
		{`ipcbus {
			on_alert x post ops ipcbus.lost
		}`, `error: event names starting with "ipcbus." are reserved`},
		{`ipcbus {
			on_alert x webhook /relative
		}`, `error: webhook url "/relative": give an absolute http or https URL`},
		{`ipcbus {
			on_alert x webhook ftp://host/a
		}`, `error: webhook url "ftp://host/a"`},
		{`ipcbus {
			on_alert x webhook http://h/a {
				attempts 11
			}
		}`, `error: webhook attempts 11: give 1 to 10`},
		{`ipcbus {
			on_alert x webhook http://h/a {
				retries 3
			}
		}`, `error: unknown on_alert webhook setting "retries"; the settings are timeout, attempts, backoff, queue_size and queue_bytes`},
		{`ipcbus {
			on_alert x log {
				level warn
			}
		}`, `error: on_alert x log takes no block of settings (only webhook does)`},
		{`ipcbus {
			on_alert a*b log
		}`, `error: alert name pattern "a*b": * is allowed only at the end`},
		{`ipcbus {
			emit
		}`, `error: emit: give alerts, events or both`},
		{`ipcbus {
			emit {
				events a/b/c*d
			}
		}`, `error: emit events "a/b/c*d": give <source> or <source>/<event>`},
		{`ipcbus {
			emit {
				colour blue
			}
		}`, `error: unknown ipcbus emit setting "colour"; the settings are alerts, events, queue_size and queue_bytes`},
		{`ipcbus {
			emit {
				alerts x
			}
			emit {
				alerts y
			}
		}`, `error: ipcbus emit is given more than once`},
	}
	for _, tt := range tests {
		checkGlobalOption(t, tt.in, tt.want)
	}
}
