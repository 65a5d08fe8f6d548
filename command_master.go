package ipcbus

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"mime"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/ipcbus/caddy-ipcbus/master"
)

// The master lives in master/, which knows nothing of Caddy's Go API (it
// drives `caddy run` processes through their admin endpoints); this file
// gives it what needs Caddy: the config adapted, the admin address parsed
// as Caddy parses it, and the cobra commands.

func runCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "run [--workers <n>] [--config <path>] [--adapter <name>] [--stop-timeout <d>] [--upgrade-timeout <d>] [--keep-zone]",
		Short: "Runs N Caddy worker processes on one config and zone, with a master like nginx's",
		Long: `
Starts --workers processes of this binary, each running the config (caddy
run) with an admin endpoint of its own (a unix socket in the zone's private
directory), and serves the config's admin address for the group:

  caddy reload, POST /load, /config/  the workers take the new config one
                                      at a time; the first one's refusal
                                      leaves the others as they were
  caddy stop, POST /stop, SIGQUIT     graceful stop of every worker
  SIGTERM, SIGINT                     fast stop (killed after --stop-timeout)
  SIGHUP                              reload from the config file
  caddy ipcbus upgrade, SIGUSR2       new workers from the binary now at the
                                      path, then the old ones stopped
  /ipcbus/*, /metrics                 answered by a live worker, for the node

A crashed worker is restarted after 1s, doubling up to 30s while it keeps
crashing. Each worker gets GOMAXPROCS = its share of the CPUs unless
GOMAXPROCS is set. When the group stops, the master removes the zone (unless
--keep-zone) and its own files.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			f := c.Flags()
			n, _ := f.GetInt("workers")
			file, _ := f.GetString("config")
			adapter, _ := f.GetString("adapter")
			stopTimeout, _ := f.GetDuration("stop-timeout")
			upgradeTimeout, _ := f.GetDuration("upgrade-timeout")
			keep, _ := f.GetBool("keep-zone")
			cfg, file, adapter, err := caddycmd.LoadConfig(file, adapter)
			if err != nil {
				return err
			}
			if file == "" {
				return fmt.Errorf("no config file: give --config, or run in the directory of a Caddyfile")
			}
			opts := master.Options{
				Workers: n, Config: cfg, StopTimeout: stopTimeout, UpgradeTimeout: upgradeTimeout, KeepZone: keep,
				Reload: func() ([]byte, error) {
					cfg, _, _, err := caddycmd.LoadConfig(file, adapter)
					return cfg, err
				},
				Adapt:  adaptBody,
				Logger: caddy.Log().Named("ipcbus.master"),
			}
			if err := masterAdmin(cfg, &opts); err != nil {
				return err
			}
			return master.Run(context.Background(), opts)
		},
	}
	c.Flags().Int("workers", runtime.NumCPU(), "number of worker processes")
	c.Flags().String("config", "", "config file (default: ./Caddyfile)")
	c.Flags().String("adapter", "", "name of the config adapter")
	c.Flags().Duration("stop-timeout", master.DefaultStopTimeout, "how long a fast stop waits for a worker before killing it")
	c.Flags().Duration("upgrade-timeout", master.DefaultUpgradeTimeout, "how long the first start and an upgrade wait for workers to serve")
	c.Flags().Bool("keep-zone", false, "keep the zone file when the group stops")
	return c
}

func upgradeCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "upgrade [--binary <path>] [--address <admin>] [--config <path>] [--adapter <name>]",
		Short: "Upgrades the workers of a caddy ipcbus run master to a new binary, with no downtime",
		Long: `
Asks the master (at --address, else the admin address of --config, else
localhost:2019) to start a new generation of workers from --binary (default:
the path the master was started from, as it is now), wait until they are all
live on the zone and serving, then stop the old ones gracefully. If the new
ones do not come up, they are stopped, the old ones go on, and the command
fails. Sending SIGUSR2 to the master does the same with the default binary.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			f := c.Flags()
			binary, _ := f.GetString("binary")
			address, _ := f.GetString("address")
			file, _ := f.GetString("config")
			adapter, _ := f.GetString("adapter")
			if binary != "" {
				abs, err := filepath.Abs(binary)
				if err != nil {
					return err
				}
				binary = abs
			}
			addr, err := caddycmd.DetermineAdminAPIAddress(address, nil, file, adapter)
			if err != nil {
				return err
			}
			body, _ := json.Marshal(master.UpgradeRequest{Binary: binary})
			resp, err := caddycmd.AdminAPIRequest(addr, "POST", "/ipcbus/master/upgrade", nil, bytes.NewReader(body))
			if err != nil {
				return fmt.Errorf("upgrading: %w", err)
			}
			defer resp.Body.Close()
			var res master.UpgradeResult
			if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
				return fmt.Errorf("reading the master's answer: %w", err)
			}
			fmt.Fprintf(c.OutOrStdout(), "upgraded: new workers %v\n", res.PIDs)
			return nil
		},
	}
	c.Flags().String("binary", "", "path of the new binary (default: the master's own path)")
	c.Flags().String("address", "", "the master's admin address")
	c.Flags().String("config", "", "config file, to find the admin address")
	c.Flags().String("adapter", "", "name of the config adapter")
	return c
}

// masterAdmin sets where the master serves the group's admin endpoint,
// from the config's admin settings as Caddy reads them (the default
// address, CADDY_ADMIN, placeholders), and the Host values it accepts.
func masterAdmin(cfg []byte, opts *master.Options) error {
	var c struct {
		Admin *caddy.AdminConfig `json:"admin"`
	}
	if err := json.Unmarshal(cfg, &c); err != nil {
		return fmt.Errorf("reading the admin settings of the config: %w", err)
	}
	if c.Admin != nil && c.Admin.Disabled {
		return nil
	}
	listen := caddy.DefaultAdminListen
	if c.Admin != nil && c.Admin.Listen != "" {
		listen = c.Admin.Listen
	}
	listen, err := caddy.NewReplacer().ReplaceOrErr(listen, true, true)
	if err != nil {
		return fmt.Errorf("admin address: %w", err)
	}
	na, err := caddy.ParseNetworkAddress(listen)
	if err != nil || na.PortRangeSize() != 1 {
		return fmt.Errorf("invalid admin address %q: give one address, such as localhost:2019 or unix//run/caddy.sock", listen)
	}
	if na.IsUnixNetwork() {
		path, modeText, _ := strings.Cut(na.Host, "|")
		opts.AdminNetwork, opts.AdminAddress = "unix", path
		if modeText != "" {
			m, err := strconv.ParseUint(modeText, 8, 32)
			if err != nil {
				return fmt.Errorf("invalid admin socket mode %q", modeText)
			}
			opts.AdminSocketMode = os.FileMode(m)
		}
		return nil
	}
	if na.IsFdNetwork() {
		return fmt.Errorf("admin address %s: socket activation is not supported by caddy ipcbus run", listen)
	}
	opts.AdminNetwork, opts.AdminAddress = na.Network, na.JoinHostPort(0)
	port := strconv.FormatUint(uint64(na.StartPort), 10)
	switch strings.ToLower(na.Host) {
	case "", "0.0.0.0", "::":
		// every interface: no Host check, as Caddy
	case "localhost", "127.0.0.1", "::1":
		for _, h := range []string{"localhost", "127.0.0.1", "::1"} {
			opts.AdminHosts = append(opts.AdminHosts, net.JoinHostPort(h, port))
		}
	default:
		opts.AdminHosts = append(opts.AdminHosts, net.JoinHostPort(na.Host, port))
	}
	if c.Admin != nil {
		for _, o := range c.Admin.Origins {
			opts.AdminHosts = append(opts.AdminHosts, strings.TrimPrefix(strings.TrimPrefix(o, "http://"), "https://"))
		}
	}
	return nil
}

// adaptBody adapts a POST /load body by its content type, as Caddy's
// admin endpoint does ("text/caddyfile" → the caddyfile adapter).
func adaptBody(body []byte, contentType string) ([]byte, error) {
	ct, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return nil, fmt.Errorf("invalid Content-Type: %w", err)
	}
	_, name, ok := strings.Cut(ct, "/")
	if !ok {
		return nil, fmt.Errorf("malformed Content-Type %q", contentType)
	}
	name = strings.TrimPrefix(name, "x-")
	a := caddyconfig.GetAdapter(name)
	if a == nil {
		return nil, fmt.Errorf("unrecognized config adapter %q", name)
	}
	out, _, err := a.Adapt(body, nil)
	if err != nil {
		return nil, fmt.Errorf("adapting the config with %s: %w", name, err)
	}
	return out, nil
}
