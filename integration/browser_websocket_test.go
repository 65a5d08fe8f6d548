package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// wsPage is a small page that subscribes to /ws (envelope and publish) of
// the process that serves it, lists what comes, and can publish on the
// socket (window.publish).
const wsPage = `<!doctype html>
<meta charset="utf-8">
<title>ipcbus websocket</title>
<ul id="log"></ul>
<script>
const ws = new WebSocket("ws://" + location.host + "/ws?source=chat");
ws.onopen = () => { document.body.dataset.open = "1"; };
ws.onmessage = (m) => {
	const e = JSON.parse(m.data);
	const li = document.createElement("li");
	li.textContent = e.source ? "event " + e.seq + " " + e.source + " " + e.event + " " + JSON.stringify(e.data) + " pid " + e.pid : "answer " + m.data;
	document.getElementById("log").appendChild(li);
};
ws.onclose = (c) => { document.body.dataset.closed = String(c.code); };
window.publish = (data) => ws.send(JSON.stringify({source: "chat", event: "browser", data: data, id: "b1"}));
</script>
`

// TestWebSocketInChromium: headless Chromium opens a page served by
// process B that subscribes over a WebSocket; an event published through
// process A appears in the page with A's pid; the page publishes on its
// socket (answered with a seq, and read back from process A); a reload of
// B closes the page's socket with status 1001.
func TestWebSocketInChromium(t *testing.T) {
	chrome := chromiumPath(t)
	n := newNode(t)
	if err := os.WriteFile(filepath.Join(n.dir, "ws.html"), []byte(wsPage), 0o644); err != nil {
		t.Fatal(err)
	}
	n.routes = wsRoutes + fmt.Sprintf(`
	handle /ws.html {
		root * %s
		file_server
	}`, n.dir)
	a, b := n.start(), n.start()
	eval := openChromium(t, chrome, t.TempDir(), b.url("/ws.html"))
	waitJS(t, eval, `document.body.dataset.open === "1"`)
	a.publish(t, "source=chat&event=msg", "hello chromium")
	li := func(what string) string {
		return fmt.Sprintf(`([...document.querySelectorAll("#log li")].map(li => li.textContent).find(t => t.includes(%q)) || "")`, what)
	}
	waitJS(t, eval, li(`chat msg "hello chromium"`)+` !== ""`)
	if got := fmt.Sprint(eval(li("hello chromium"))); !strings.Contains(got, fmt.Sprintf("pid %d", a.pid())) {
		t.Fatalf("the page shows %q, want A's pid %d", got, a.pid())
	}
	eval(`window.publish({"from": "chromium"}); true`)
	waitJS(t, eval, li(`answer {"seq":`)+` !== ""`)
	answer := fmt.Sprint(eval(li("answer")))
	var seq uint64
	if _, err := fmt.Sscanf(answer, `answer {"seq":%d,"id":"b1"}`, &seq); err != nil {
		t.Fatalf("answer %q: %v", answer, err)
	}
	page, _ := longPoll(t, a.url(fmt.Sprintf("/events?since=%d&timeout=0", seq)))
	if len(page.Events) != 1 || page.Events[0].Event != "browser" || string(page.Events[0].Data) != `{"from":"chromium"}` || page.Events[0].PID != b.pid() {
		t.Fatalf("published from the page (answer %s), A reads %+v", answer, page)
	}
	waitJS(t, eval, li(`chat browser {"from":"chromium"}`)+` !== ""`)
	if out, err := cli(t, "reload", "--config", b.config, "--adapter", "caddyfile", "--address", b.admin, "--force"); err != nil {
		t.Fatalf("reload: %v\n%s", err, out)
	}
	waitJS(t, eval, `document.body.dataset.closed === "1001"`)
	t.Logf("the page on process B (pid %d) got %q from A (pid %d) and %q; closed 1001 on reload", b.pid(), eval(li("hello chromium")), a.pid(), answer)
}
