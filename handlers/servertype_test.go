package handlers_test

import "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

func httpServerType() httpcaddyfile.ServerType { return httpcaddyfile.ServerType{} }
