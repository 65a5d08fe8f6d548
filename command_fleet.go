package ipcbus

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"text/tabwriter"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	"github.com/ipcbus/caddy-ipcbus/fleet"
)

// maxFleetAnswer bounds the admin answer the CLI reads.
const maxFleetAnswer = 16 << 20

// printFleet asks a running Caddy's admin endpoint for GET /ipcbus/fleet
// (the fleet's hosts live in NATS, not in the zone) and prints every host.
func printFleet(out io.Writer, address string, asJSON bool) error {
	addr, err := caddycmd.DetermineAdminAPIAddress(address, nil, "", "")
	if err != nil {
		return err
	}
	resp, err := caddycmd.AdminAPIRequest(addr, http.MethodGet, "/ipcbus/fleet", nil, nil)
	if err != nil {
		return fmt.Errorf("asking %s for the fleet: %w", addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxFleetAnswer))
	if err != nil {
		return fmt.Errorf("reading the fleet from %s: %w", addr, err)
	}
	var st fleet.Status
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("the fleet answer of %s is not JSON: %w", addr, err)
	}
	if asJSON {
		_, err := out.Write(body)
		return err
	}
	return writeFleetTable(out, st, time.Now())
}

func writeFleetTable(out io.Writer, st fleet.Status, now time.Time) error {
	conn := "not connected"
	if st.Connected {
		conn = "connected to " + st.Server
	}
	fmt.Fprintf(out, "fleet %s  stream %s  this node %s, %s\n", st.Name, st.Stream, st.Node, conn)
	fmt.Fprintf(out, "bridge pid %d since %s\n", st.Bridge.PID, ago(st.Bridge.Since, now))
	fmt.Fprintf(out, "out: published %d  pending %d  lost %d  too large %d\n", st.Out.Published, st.Out.Pending, st.Out.Lost, st.Out.TooLarge)
	if st.In.Started {
		fmt.Fprintf(out, "in:  applied %d  lag %d  lost %d  (stream seq %d)\n\n", st.In.Applied, st.In.Lag, st.In.Lost, st.In.StreamSeq)
	} else {
		fmt.Fprintf(out, "in:  not started: the stream has not answered this host's first bridge yet\n\n")
	}
	if st.NodesError != "" {
		fmt.Fprintf(out, "hosts unknown: %s\n", st.NodesError)
		return nil
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tWORKERS\tSTARTS\tRELOADS\tCRASHES\tBRIDGE PID\tLAST SEEN\tVERSION")
	for _, n := range st.Nodes {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", n.Node, n.Workers, n.Starts, n.Reloads, n.Crashes, n.BridgePID, ago(n.LastSeen, now), n.Version)
	}
	return tw.Flush()
}
