package chaos

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// child is one chaos process: a re-execution of the current binary in a
// role, with a pipe on its standard input (closing it, or a line on it,
// is how the driver talks) and its standard output read line by line.
type child struct {
	name  string
	cmd   *exec.Cmd
	in    *os.File
	done  chan struct{} // closed when its standard output reaches EOF
	lines chan string   // for readers: every line; nil for writers

	mu   sync.Mutex
	last string // for writers: the last line
	// exited is set once Wait returned.
	exited bool
	err    error
}

// start starts a child with env added to the driver's environment. With
// keepLines, every output line is queued on lines; otherwise only the last
// one is kept (a writer's latest report).
func start(name string, env []string, keepLines bool) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, err
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, os.Stderr
	// A child must not outlive the driver.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, in: inW, done: make(chan struct{})}
	if keepLines {
		c.lines = make(chan string, 16)
	}
	go c.read(outR)
	return c, nil
}

func (c *child) read(out *os.File) {
	defer close(c.done)
	defer out.Close()
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		if c.lines != nil {
			c.lines <- sc.Text()
			continue
		}
		c.mu.Lock()
		c.last = sc.Text()
		c.mu.Unlock()
	}
	if c.lines != nil {
		close(c.lines)
	}
}

// line returns the child's next output line, waiting at most until deadline.
func (c *child) line(deadline time.Time) (string, error) {
	select {
	case l, ok := <-c.lines:
		if !ok {
			return "", fmt.Errorf("%s: exited without output", c.name)
		}
		return l, nil
	case <-time.After(time.Until(deadline)):
		return "", fmt.Errorf("%s: no output in time", c.name)
	}
}

// lastLine is the last line a writer printed.
func (c *child) lastLine() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

func (c *child) signal(s syscall.Signal) { c.cmd.Process.Signal(s) }

// wait waits for the child's exit and the end of its output, at most until
// deadline; past it the child is killed and an error returned.
func (c *child) wait(deadline time.Time) error {
	if c.exited {
		return c.err
	}
	exit := make(chan error, 1)
	go func() { exit <- c.cmd.Wait() }()
	select {
	case c.err = <-exit:
	case <-time.After(time.Until(deadline)):
		c.cmd.Process.Signal(syscall.SIGCONT)
		c.cmd.Process.Kill()
		<-exit
		c.err = fmt.Errorf("%s: did not exit in time, killed", c.name)
	}
	c.exited = true
	c.in.Close()
	<-c.done
	return c.err
}

// kill ends a child at once (a stopped one too) and reaps it.
func (c *child) kill() {
	if !c.exited {
		c.cmd.Process.Kill()
		c.wait(time.Now().Add(10 * time.Second))
	}
}
