package ipcbus

import (
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/ipcbus/caddy-ipcbus/master"
	"github.com/ipcbus/caddy-ipcbus/workermgr"
	"github.com/ipcbus/caddy-ipcbus/zone"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "ipcbus",
		Usage: "workers|tail|rm|run|upgrade [--zone <name>] [--dir <path>] [--mode <octal>] ...",
		Short: "Runs worker groups; inspects, follows and removes ipcbus zones",
		Long: `
Runs N Caddy workers under a master, and reads an ipcbus zone file
directly (no admin endpoint needed).

  caddy ipcbus run [--workers <n>] [--config <path>] [--adapter <name>]
      runs N worker processes on the config and its zone, with a master
      that serves the config's admin address for them (see its --help);
  caddy ipcbus upgrade [--binary <path>] [--address <admin>] [--config <path>]
      asks that master for a zero-downtime upgrade to a new binary;
  caddy ipcbus workers [--zone <name>] [--dir <path>] [--mode <octal>] [--json]
      prints the zone's master (if any), the node counters and the worker
      table; with --fleet, every host of the fleet, from the admin endpoint
      at --address;
  caddy ipcbus tail [--zone ...] [--source <s>] [--event <e>] [--since <seq>|now] [--count <n>] [--json]
      follows the events bus like tail -f: every event posted on the node,
      from now (or from sequence --since, as far back as the ring holds),
      until interrupted or --count events; losses are reported;
  caddy ipcbus rm [--zone ...]
      removes a zone (its file, blobs and usage file) once no process uses
      it; refused while any worker or process holds it.

--zone, --dir and --mode name the zone as the ipcbus global option does
(defaults: "default"; /dev/shm, else $XDG_RUNTIME_DIR, else the temp dir;
0600). The zone file is <dir>/ipcbus-<uid>/<zone>.zone for this user, or
<dir>/ipcbus-g<gid>/<zone>.zone for this group with a group mode such as
0660: run the command as the user (or with the group) Caddy runs as.
--json prints the same JSON as the admin endpoint GET /ipcbus/workers.`,
		CobraFunc: func(cmd *cobra.Command) {
			workers := &cobra.Command{
				Use:   "workers [--zone <name>] [--dir <path>] [--mode <octal>] [--json] [--fleet [--address <admin>]]",
				Short: "Prints the node counters and the worker table of a zone",
				Args:  cobra.NoArgs,
				RunE: func(c *cobra.Command, _ []string) error {
					o, err := zoneOptions(c)
					if err != nil {
						return err
					}
					asJSON, _ := c.Flags().GetBool("json")
					if all, _ := c.Flags().GetBool("fleet"); all {
						addr, _ := c.Flags().GetString("address")
						return printFleet(c.OutOrStdout(), addr, asJSON)
					}
					return printWorkers(c.OutOrStdout(), o, asJSON)
				},
			}
			zoneFlags(workers)
			workers.Flags().Bool("json", false, "print JSON")
			workers.Flags().Bool("fleet", false, "list every host of the fleet, asking the admin endpoint at --address (GET /ipcbus/fleet)")
			workers.Flags().String("address", "", "the admin endpoint for --fleet (default: localhost:2019, or CADDY_ADMIN)")
			cmd.AddCommand(workers, tailCommand(), rmCommand(), runCommand(), upgradeCommand())
			cmd.Args = cobra.ArbitraryArgs
			cmd.RunE = func(c *cobra.Command, args []string) error {
				if len(args) > 0 {
					return fmt.Errorf("unknown command %q for caddy ipcbus; use workers, tail, rm, run or upgrade", args[0])
				}
				return c.Help()
			}
		},
	})
}

func printWorkers(out io.Writer, o zone.Options, asJSON bool) error {
	o.ReadOnly = true
	name := o.Name
	z, err := zone.Open(o)
	if err != nil {
		if others := otherZoneFiles(o); len(others) > 0 {
			return fmt.Errorf("%w; zone files of that name in other users' or groups' directories: %s (run the command as their owner, or with --mode for a group's)", err, strings.Join(others, ", "))
		}
		return err
	}
	defer z.Close()
	node, workers := workermgr.Snapshot(z)
	rep := withMaster(WorkersReport{Zone: ZoneInfo{Name: name, Path: z.Path(), Size: z.Size()}, Node: node, Workers: workers})
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	return writeTable(out, rep, time.Now())
}

// otherZoneFiles lists the zone files named like o's in every private
// directory of o's directory but o's own.
func otherZoneFiles(o zone.Options) []string {
	if o.Dir == "" {
		o.Dir = zone.DefaultDir()
	}
	own := zone.PathFor(o)
	matches, _ := filepath.Glob(filepath.Join(o.Dir, "ipcbus-*", o.Name+".zone"))
	var out []string
	for _, m := range matches {
		if m != own {
			out = append(out, m)
		}
	}
	return out
}

func ago(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return humanize.RelTime(t, now, "ago", "from now")
}

// writeMaster prints the zone's master and its workers, if one runs.
func writeMaster(out io.Writer, in *master.Info, now time.Time) {
	if in == nil || !in.Running {
		return
	}
	admin := in.Admin
	if admin == "" {
		admin = "off"
	}
	fmt.Fprintf(out, "master pid %d, started %s, admin %s, generation %d, binary %s\n", in.PID, ago(in.StartedAt, now), admin, in.Generation, in.Binary)
	for _, w := range in.Workers {
		state := "worker"
		switch {
		case w.Stopping:
			state = "stopping"
		case w.Starting:
			state = "starting"
		}
		fmt.Fprintf(out, "  %s %d: pid %d, generation %d, started %s, restarts %d\n", state, w.Slot, w.PID, w.Generation, ago(w.StartedAt, now), w.Restarts)
	}
}

func writeTable(out io.Writer, rep WorkersReport, now time.Time) error {
	n := rep.Node
	since := "started " + ago(n.StartedAt, now)
	if n.State == "stopped" {
		since = "stopped " + ago(n.StoppedAt, now)
	}
	fmt.Fprintf(out, "zone %s  %s  %s\n", rep.Zone.Name, rep.Zone.Path, humanize.IBytes(uint64(rep.Zone.Size)))
	fmt.Fprintf(out, "node %s, %s (start #%d)\n", n.State, since, n.Epoch)
	writeMaster(out, rep.Master, now)
	fmt.Fprintf(out, "node starts %d  worker starts %d  reloads %d  exits %d  crashes %d  missed heartbeats %d  ring gaps %d  alerts discarded %d\n\n",
		n.Starts, n.WorkerStarts, n.Reloads, n.Exits, n.Crashes, n.MissedHeartbeats, n.RingGaps, n.AlertsDiscarded)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tPID\tGEN\tSTATE\tREASON\tSTARTED\tHEARTBEAT\tLAG")
	for _, w := range rep.Workers {
		hb := "-"
		if w.State == "live" || w.State == "hung" || w.State == "dead" {
			hb = (time.Duration(w.HeartbeatAgeMs) * time.Millisecond).Round(time.Millisecond).String() + " ago"
		}
		reason := w.Reason
		if reason == "" {
			reason = "-"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\n", w.ID, w.PID, w.Generation, w.State, reason, ago(w.StartedAt, now), hb, strconv.FormatUint(w.Lag, 10))
	}
	if len(rep.Workers) == 0 {
		fmt.Fprintln(tw, "(no workers)")
	}
	return tw.Flush()
}
