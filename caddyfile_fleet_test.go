package ipcbus

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

func TestFleetOption(t *testing.T) {
	tests := []struct {
		in   string
		want string // JSON of the app's fleet, or an error substring after "error: "
	}{
		{`ipcbus {
			fleet prod
		}`, `{"name":"prod"}`},
		{`ipcbus {
			fleet prod {
				nats nats://10.0.0.1:4222 nats://10.0.0.2:4222
				node web-1
				sources cache chat.*
				user caddy s3cret
				tls {
					ca /etc/nats/ca.pem
					server_name nats.internal
				}
				replicas 3
				max_age 1h
				max_bytes 2GiB
				node_ttl 10s
			}
		}`, `{"name":"prod","nats":["nats://10.0.0.1:4222","nats://10.0.0.2:4222"],"node":"web-1","sources":["cache","chat.*"],"user":"caddy","password":"s3cret","tls":{"ca":"/etc/nats/ca.pem","server_name":"nats.internal"},"replicas":3,"max_age":3600000000000,"max_bytes":2147483648,"node_ttl":10000000000}`},
		{`ipcbus {
			fleet
		}`, `error: ipcbus fleet needs a name`},
		{`ipcbus {
			fleet a b
		}`, `error: ipcbus fleet takes one name`},
		{`ipcbus {
			fleet a {
				replicas 7
			}
		}`, `error: ipcbus fleet replicas: "7" must be a number from 1 to 5`},
		{`ipcbus {
			fleet a {
				speed 3
			}
		}`, `error: unknown ipcbus fleet setting "speed"`},
		{`ipcbus {
			fleet a {
				user onlyname
			}
		}`, `error: ipcbus fleet user needs a name and a password`},
		{`ipcbus {
			fleet a {
				tls {
					pin abc
				}
			}
		}`, `error: unknown ipcbus fleet tls setting "pin"`},
		{`ipcbus {
			fleet a
			fleet b
		}`, `error: ipcbus fleet is given more than once`},
		{`ipcbus {
			fleet a {
				node_ttl soon
			}
		}`, `error: ipcbus fleet node_ttl: "soon" is not a positive duration`},
	}
	for _, tt := range tests {
		v, err := parseGlobalOption(caddyfile.NewTestDispenser(tt.in), nil)
		if want, isErr := strings.CutPrefix(tt.want, "error: "); isErr {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("%s: error %v, want %q", tt.in, err, want)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tt.in, err)
			continue
		}
		var app struct{ Fleet json.RawMessage }
		if err := json.Unmarshal(v.(httpcaddyfile.App).Value, &app); err != nil {
			t.Fatal(err)
		}
		var a, b any
		json.Unmarshal(app.Fleet, &a)
		json.Unmarshal([]byte(tt.want), &b)
		if mustJSON(a) != mustJSON(b) {
			t.Errorf("%s: got %s, want %s", tt.in, app.Fleet, tt.want)
		}
	}
}

func TestFleetValidate(t *testing.T) {
	for _, tt := range []struct {
		fc   FleetConfig
		want string
	}{
		{FleetConfig{Name: "bad name"}, "invalid fleet name"},
		{FleetConfig{Name: "a", Node: "web.1"}, "invalid fleet node"},
		{FleetConfig{Name: "a", NATS: []string{"localhost:4222"}}, "invalid NATS url"},
		{FleetConfig{Name: "a", Token: "t", User: "u"}, "at most one of creds, nkey, token or user"},
		{FleetConfig{Name: "a", TLS: &FleetTLS{Cert: "/x.pem"}}, "give both cert and key"},
		{FleetConfig{Name: "a", NodeTTL: 1}, "invalid fleet node_ttl"},
	} {
		a := &App{Fleet: &tt.fc}
		a.setDefaults()
		err := a.Validate()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: %v, want %q", tt.fc, err, tt.want)
		}
	}
}
