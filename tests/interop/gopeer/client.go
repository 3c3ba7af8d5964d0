package main

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/crypto/ssh"
)

// headerList is a repeatable -header "Name: value" flag.
type headerList []string

func (h *headerList) String() string     { return strings.Join(*h, ", ") }
func (h *headerList) Set(v string) error { *h = append(*h, v); return nil }

type clientConfig struct {
	server           string
	remotes          []remote
	headers          http.Header
	auth             string
	methods          []string
	fingerprint      string
	keepalive        time.Duration
	pingTimeout      time.Duration
	maxRetryCount    int
	maxRetryInterval time.Duration
	handshakeTimeout time.Duration
	dialTimeout      time.Duration
	udpIdle          time.Duration
	version          string
	outsystemscc     bool
	dialFirst        bool
	clientID         string
}

// errFatal marks errors after which chisel's client stops retrying.
type errFatal struct{ error }

func clientMain(args []string) error {
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	var headers headerList
	c := clientConfig{headers: http.Header{}}
	fs.Var(&headers, "header", `extra upgrade header "Name: value" (repeatable), e.g. "token: abc"`)
	fs.StringVar(&c.auth, "auth", "", "user:password for SSH (empty: empty user, empty password, as chisel)")
	methods := fs.String("methods", "password", "SSH auth methods after none, in order (password,keyboard-interactive)")
	fs.StringVar(&c.fingerprint, "fingerprint", "", "server host key SHA-256 fingerprint (base64) to pin")
	fs.DurationVar(&c.keepalive, "keepalive", 25*time.Second, "ping interval (0s: none)")
	fs.DurationVar(&c.pingTimeout, "ping-timeout", 0, "reconnect when a ping is not answered in time (0: wait)")
	fs.IntVar(&c.maxRetryCount, "max-retry-count", -1, "give up after this many retries (-1: never)")
	fs.DurationVar(&c.maxRetryInterval, "max-retry-interval", 5*time.Minute, "longest wait between retries")
	fs.DurationVar(&c.handshakeTimeout, "handshake-timeout", 45*time.Second, "WebSocket + SSH handshake deadline")
	fs.DurationVar(&c.dialTimeout, "dial-timeout", 10*time.Second, "timeout dialling a channel's target")
	fs.DurationVar(&c.udpIdle, "udp-idle", 60*time.Second, "UDP flow idle timeout")
	fs.StringVar(&c.version, "version", "1.11.5-gopeer", "Version in the config request")
	fs.BoolVar(&c.outsystemscc, "outsystemscc", false, "behave as outsystemscc: address GET, ?id=&ports= query, its User-Agent and Version")
	fs.BoolVar(&c.dialFirst, "dial-first", false, "dial before accepting a channel; refuse it with the dial error")
	fs.BoolVar(&logPongs, "v", false, "log every answered ping")
	fs.Parse(args)
	if fs.NArg() < 2 {
		return fmt.Errorf("usage: gopeer client [flags] SERVER-URL REMOTE...")
	}
	c.server = fs.Arg(0)
	for _, text := range fs.Args()[1:] {
		r, err := parseRemote(text)
		if err != nil {
			return err
		}
		c.remotes = append(c.remotes, r)
	}
	for _, h := range headers {
		name, value, ok := strings.Cut(h, ":")
		if !ok {
			return fmt.Errorf("header %q: want \"Name: value\"", h)
		}
		c.headers.Add(strings.TrimSpace(name), strings.TrimSpace(value))
	}
	for _, m := range strings.Split(*methods, ",") {
		if m = strings.TrimSpace(m); m != "" {
			c.methods = append(c.methods, m)
		}
	}
	if c.outsystemscc {
		c.version = "0.0.0-src"
		c.clientID = fmt.Sprintf("%09d", 100000000+rand.New(rand.NewSource(time.Now().UnixNano())).Intn(900000000))
		if c.headers.Get("User-Agent") == "" {
			c.headers.Set("User-Agent", "CloudConnector/2.0.11")
		}
	}
	return runClient(&c)
}

// runClient connects, serves, and reconnects with a doubling backoff from
// 100 ms up to -max-retry-interval, reset after each working connection;
// SIGHUP cuts a wait short (as chisel's client).
func runClient(c *clientConfig) error {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	delay := 100 * time.Millisecond
	for attempt := 0; ; attempt++ {
		connected, err := connectOnce(c)
		var fatal errFatal
		if errors.As(err, &fatal) {
			return fatal.error
		}
		if connected {
			delay = 100 * time.Millisecond
			attempt = 0
		}
		if err != nil {
			log.Printf("client: Connection error: %v", err)
		} else {
			log.Printf("client: Disconnected")
		}
		if c.maxRetryCount >= 0 && attempt >= c.maxRetryCount {
			return fmt.Errorf("giving up after %d retries", attempt)
		}
		log.Printf("client: Retrying in %s...", delay)
		select {
		case <-time.After(delay):
		case <-hup:
		}
		delay *= 2
		if delay > c.maxRetryInterval {
			delay = c.maxRetryInterval
		}
	}
}

func websocketURL(server string) (string, error) {
	u, err := url.Parse(server)
	if err != nil {
		return "", err
	}
	switch u.Scheme {
	case "http", "ws":
		u.Scheme = "ws"
	case "https", "wss":
		u.Scheme = "wss"
	default:
		return "", fmt.Errorf("server URL %q: want http(s):// or ws(s)://", server)
	}
	return u.String(), nil
}

// resolveAddress is outsystemscc's first step (PROTOCOL.md section 1): a
// plain GET of the address; a 302 names the tunnel URL.
func resolveAddress(c *clientConfig) (string, error) {
	client := &http.Client{
		Timeout:       c.handshakeTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	req, err := http.NewRequest("GET", c.server, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("User-Agent", "go-resty/2.16.5 (https://github.com/go-resty/resty)")
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode == http.StatusFound && resp.Header.Get("Location") != "" {
		log.Printf("client: address redirects to %s", resp.Header.Get("Location"))
		return resp.Header.Get("Location"), nil
	}
	return c.server, nil
}

// connectOnce runs one connection; connected says whether it got as far as
// an accepted config (so the backoff starts over).
func connectOnce(c *clientConfig) (connected bool, err error) {
	server := c.server
	if c.outsystemscc {
		if server, err = resolveAddress(c); err != nil {
			return false, err
		}
	}
	wsURL, err := websocketURL(server)
	if err != nil {
		return false, errFatal{err}
	}
	if c.outsystemscc {
		ports := make([]string, len(c.remotes))
		for i, r := range c.remotes {
			ports[i] = r.LocalPort
		}
		wsURL += "?id=" + c.clientID + "&ports=" + strings.Join(ports, ",")
	}
	log.Printf("client: Connecting to %s", wsURL)
	start := time.Now()
	dialer := websocket.Dialer{
		HandshakeTimeout: c.handshakeTimeout,
		Subprotocols:     []string{"chisel-v3"},
		TLSClientConfig:  &tls.Config{}, // system roots: SSL_CERT_FILE is honoured
		ReadBufferSize:   32 * 1024,
		WriteBufferSize:  32 * 1024,
	}
	ws, resp, err := dialer.Dial(wsURL, c.headers)
	if err != nil {
		if resp != nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
			resp.Body.Close()
			return false, fmt.Errorf("%v: HTTP %d: %s", err, resp.StatusCode, strings.TrimSpace(string(body)))
		}
		return false, err
	}
	conn := newWSConn(ws)
	defer conn.Close()

	user, password, _ := strings.Cut(c.auth, ":")
	var auth []ssh.AuthMethod
	for _, m := range c.methods {
		switch m {
		case "password":
			auth = append(auth, ssh.Password(password))
		case "keyboard-interactive":
			auth = append(auth, ssh.KeyboardInteractive(func(_, _ string, qs []string, _ []bool) ([]string, error) {
				answers := make([]string, len(qs))
				for i := range answers {
					answers[i] = password
				}
				return answers, nil
			}))
		default:
			return false, errFatal{fmt.Errorf("auth method %q: want password or keyboard-interactive", m)}
		}
	}
	sshConfig := &ssh.ClientConfig{
		User:            user,
		Auth:            auth,
		ClientVersion:   "SSH-chisel-v3-client",
		HostKeyCallback: c.verifyHostKey,
	}
	conn.SetDeadline(time.Now().Add(c.handshakeTimeout))
	sc, chans, reqs, err := ssh.NewClientConn(conn, "", sshConfig)
	if err != nil {
		return false, err
	}
	conn.SetDeadline(time.Time{})
	defer sc.Close()
	go serveGlobalRequests("client", reqs)

	ok, reply, err := sc.SendRequest("config", true, encodeConfig(c.version, c.remotes))
	if err != nil {
		return false, fmt.Errorf("config: %v", err)
	}
	if !ok {
		return false, errFatal{fmt.Errorf("server refused the remotes: %s", reply)}
	}
	log.Printf("client: Connected (Latency %s)", time.Since(start).Round(time.Microsecond))
	go c.serveChannels(chans)
	done := make(chan error, 1)
	stopped := make(chan struct{})
	go func() { done <- sc.Wait(); close(stopped) }()
	if c.keepalive > 0 {
		go keepalive("client", sc, c.keepalive, c.pingTimeout, stopped)
	}
	err = <-done
	if err == io.EOF {
		err = nil
	}
	return true, err
}

func (c *clientConfig) verifyHostKey(_ string, _ net.Addr, key ssh.PublicKey) error {
	sum := sha256.Sum256(key.Marshal())
	got := base64.StdEncoding.EncodeToString(sum[:])
	if c.fingerprint != "" && strings.TrimRight(c.fingerprint, "=") != strings.TrimRight(got, "=") {
		return fmt.Errorf("host key fingerprint %s does not match %s", got, c.fingerprint)
	}
	return nil
}

func (c *clientConfig) serveChannels(chans <-chan ssh.NewChannel) {
	for nc := range chans {
		if nc.ChannelType() != "chisel" {
			nc.Reject(ssh.UnknownChannelType, "unsupported channel type "+nc.ChannelType())
			continue
		}
		target := string(nc.ExtraData())
		if strings.HasSuffix(target, "/udp") {
			ch, reqs, err := nc.Accept()
			if err != nil {
				continue
			}
			go ssh.DiscardRequests(reqs)
			go serveUDPChannel(ch, strings.TrimSuffix(target, "/udp"), c.udpIdle)
			continue
		}
		go c.serveTCP(nc, target)
	}
}

// serveTCP serves one TCP channel. chisel 1.11.5 accepts the channel and
// then dials (a failed dial closes the accepted channel); with -dial-first
// it dials first and refuses the channel with the dial error, as later
// chisel releases do.
func (c *clientConfig) serveTCP(nc ssh.NewChannel, target string) {
	var ch ssh.Channel
	var reqs <-chan *ssh.Request
	var err error
	if !c.dialFirst {
		if ch, reqs, err = nc.Accept(); err != nil {
			return
		}
		go ssh.DiscardRequests(reqs)
	}
	dst, err := net.DialTimeout("tcp", target, c.dialTimeout)
	if err != nil {
		log.Printf("client: dial %s: %v", target, err)
		if ch != nil {
			ch.Close()
		} else {
			nc.Reject(ssh.ConnectionFailed, err.Error())
		}
		return
	}
	if ch == nil {
		if ch, reqs, err = nc.Accept(); err != nil {
			dst.Close()
			return
		}
		go ssh.DiscardRequests(reqs)
	}
	pipe(ch, dst)
}

// serveGlobalRequests answers "ping" with "pong" and refuses the rest.
func serveGlobalRequests(side string, reqs <-chan *ssh.Request) {
	for r := range reqs {
		switch r.Type {
		case "ping":
			r.Reply(true, []byte("pong"))
		default:
			log.Printf("%s: refused global request %q", side, r.Type)
			r.Reply(false, nil)
		}
	}
}

// keepalive pings every interval; a failed or (with timeout) late answer
// closes the connection.
// logPongs makes keepalive log every answered ping (-v), for tests.
var logPongs bool

func keepalive(side string, conn ssh.Conn, every, timeout time.Duration, done <-chan struct{}) {
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	for {
		select {
		case <-ticker.C:
		case <-done:
			return
		}
		answered := make(chan error, 1)
		go func() {
			ok, reply, err := conn.SendRequest("ping", true, nil)
			if err == nil && logPongs {
				log.Printf("%s: ping answered ok=%t %q", side, ok, reply)
			}
			answered <- err
		}()
		var late <-chan time.Time
		if timeout > 0 {
			late = time.After(timeout)
		}
		select {
		case err := <-answered:
			if err != nil {
				log.Printf("%s: ping failed: %v", side, err)
				conn.Close()
				return
			}
		case <-late:
			log.Printf("%s: ping not answered within %s; closing", side, timeout)
			conn.Close()
			return
		}
	}
}
