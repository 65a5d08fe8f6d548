package ipcbus

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/ipcbus/caddy-ipcbus/events"
	"github.com/ipcbus/caddy-ipcbus/zone"
)

// zoneFlags adds --zone, --dir and --mode to c.
func zoneFlags(c *cobra.Command) {
	c.Flags().String("zone", zone.DefaultName, "zone name")
	c.Flags().String("dir", "", "directory holding the zone's private directory")
	c.Flags().String("mode", "0600", "zone mode, as configured: 0660 looks in the group's directory")
}

// zoneOptions reads the flags zoneFlags added.
func zoneOptions(c *cobra.Command) (zone.Options, error) {
	name, _ := c.Flags().GetString("zone")
	dir, _ := c.Flags().GetString("dir")
	modeText, _ := c.Flags().GetString("mode")
	mode, err := parseMode(modeText)
	if err != nil {
		return zone.Options{}, err
	}
	return zone.Options{Name: name, Dir: dir, Mode: mode}, nil
}

func tailCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "tail [--zone <name>] [--source <s>] [--event <e>] [--since <seq>|now] [--count <n>] [--json]",
		Short: "Follows the events bus of a zone, like tail -f",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			o, err := zoneOptions(c)
			if err != nil {
				return err
			}
			o.ReadOnly = true
			source, _ := c.Flags().GetString("source")
			event, _ := c.Flags().GetString("event")
			since, _ := c.Flags().GetString("since")
			count, _ := c.Flags().GetInt("count")
			asJSON, _ := c.Flags().GetBool("json")
			z, err := zone.Open(o)
			if err != nil {
				return err
			}
			defer z.Close()
			start := z.Ring().Tail()
			if since != "now" {
				if start, err = strconv.ParseUint(since, 10, 64); err != nil {
					return fmt.Errorf("invalid --since %q: give a sequence number or now", since)
				}
			}
			stop := make(chan os.Signal, 1)
			signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
			defer signal.Stop(stop)
			return followEvents(c.OutOrStdout(), c.ErrOrStderr(), events.NewFollower(z, start), tailFilter{source, event}, count, asJSON, stop)
		},
	}
	zoneFlags(c)
	c.Flags().String("source", "", "only events of this source")
	c.Flags().String("event", "", "only events of this name")
	c.Flags().String("since", "now", "the sequence number to start at, or now")
	c.Flags().Int("count", 0, "exit after this many events (0: until interrupted)")
	c.Flags().Bool("json", false, "print one JSON object a line")
	return c
}

type tailFilter struct{ source, event string }

func (f tailFilter) keep(e events.Event) bool {
	return (f.source == "" || e.Source == f.source) && (f.event == "" || e.Name == f.event)
}

// tailLine is an event as `caddy ipcbus tail --json` prints it: the fields
// of the admin API's event pages, and a loss as {"lost","from","reason"}.
type tailLine struct {
	Seq        uint64          `json:"seq"`
	Source     string          `json:"source"`
	Event      string          `json:"event"`
	Data       json.RawMessage `json:"data,omitempty"`
	PID        int             `json:"pid"`
	Generation int             `json:"generation"`
	Time       time.Time       `json:"time"`
}

func followEvents(out, errOut io.Writer, f *events.Follower, filter tailFilter, count int, asJSON bool, stop <-chan os.Signal) error {
	enc := json.NewEncoder(out)
	seen := 0
	for count == 0 || seen < count {
		select {
		case <-stop:
			return nil
		default:
		}
		ev, loss, ok := f.Next(200 * time.Millisecond)
		switch {
		case loss.Count > 0:
			if asJSON {
				enc.Encode(map[string]any{"lost": loss.Count, "from": loss.From, "reason": loss.Reason})
			} else {
				fmt.Fprintf(errOut, "# %d events lost from %d (%s)\n", loss.Count, loss.From, loss.Reason)
			}
		case ok && filter.keep(ev):
			seen++
			if asJSON {
				l := tailLine{Seq: ev.Seq, Source: ev.Source, Event: ev.Name, PID: ev.PID, Generation: ev.Generation, Time: ev.Time}
				if ev.JSON {
					l.Data = ev.Data
				} else if len(ev.Data) > 0 {
					l.Data, _ = json.Marshal(string(ev.Data))
				}
				if err := enc.Encode(l); err != nil {
					return err
				}
				continue
			}
			data := string(ev.Data)
			if !utf8.ValidString(data) {
				data = fmt.Sprintf("(%d bytes of binary data)", len(ev.Data))
			}
			if _, err := fmt.Fprintf(out, "%s %d %s/%s %d-%d %s\n", ev.Time.Format(time.RFC3339Nano), ev.Seq, ev.Source, ev.Name, ev.Generation, ev.PID, data); err != nil {
				return err
			}
		}
	}
	return nil
}

func rmCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "rm [--zone <name>] [--dir <path>] [--mode <octal>]",
		Short: "Removes a zone that no process uses",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			o, err := zoneOptions(c)
			if err != nil {
				return err
			}
			removed, err := zone.Remove(o)
			for _, p := range removed {
				fmt.Fprintln(c.OutOrStdout(), "removed", p)
			}
			return err
		},
	}
	zoneFlags(c)
	return c
}
