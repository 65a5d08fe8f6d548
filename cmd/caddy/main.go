// Command caddy is Caddy with the standard modules and the ipcbus plugin,
// so the plugin can be built and tested without xcaddy.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/ipcbus/caddy-ipcbus"
)

func main() {
	caddycmd.Main()
}
