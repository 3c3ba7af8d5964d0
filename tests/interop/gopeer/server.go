package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/crypto/ssh"
)

type serverConfig struct {
	listen    string
	tlsCert   string
	tlsKey    string
	keyFile   string
	token     string
	bindHost  string
	keepalive time.Duration
	sshConfig *ssh.ServerConfig
	sessions  int64
}

// serverMain is `chisel server --reverse` for qanat connect to dial: a
// WebSocket upgrade on any path (a plain GET gets 404, as a stock server),
// an SSH server with an ECDSA P-256 host key that answers none with
// "password" and then takes any password, and reverse remotes listened on
// -bind-host (loopback) only.
func serverMain(args []string) error {
	fs := flag.NewFlagSet("server", flag.ExitOnError)
	s := &serverConfig{}
	fs.StringVar(&s.listen, "listen", "127.0.0.1:0", "HOST:PORT to listen on")
	fs.StringVar(&s.tlsCert, "tls-cert", "", "serve HTTPS with this certificate (PEM)")
	fs.StringVar(&s.tlsKey, "tls-key", "", "its private key (PEM)")
	fs.StringVar(&s.keyFile, "key-file", "", "SSH host key (PEM, ECDSA P-256); created when missing; empty: a fresh key")
	fs.StringVar(&s.token, "token", "", "require this token header (a stock server checks none)")
	fs.StringVar(&s.bindHost, "bind-host", "127.0.0.1", "where reverse remotes listen, whatever their LocalHost")
	fs.DurationVar(&s.keepalive, "keepalive", 25*time.Second, "ping interval (0s: none)")
	fs.BoolVar(&logPongs, "v", false, "log every answered ping, and every ping received")
	fs.Parse(args)

	signer, err := hostKey(s.keyFile)
	if err != nil {
		return err
	}
	s.sshConfig = &ssh.ServerConfig{
		ServerVersion: "SSH-chisel-v3-server",
		PasswordCallback: func(ssh.ConnMetadata, []byte) (*ssh.Permissions, error) {
			return nil, nil // no users configured: any password
		},
		AuthLogCallback: func(meta ssh.ConnMetadata, method string, err error) {
			result := "accepted"
			if err != nil {
				result = "failed"
			}
			log.Printf("server: auth user=%q method=%s %s", meta.User(), method, result)
		},
	}
	s.sshConfig.AddHostKey(signer)
	sum := sha256.Sum256(signer.PublicKey().Marshal())
	log.Printf("server: Fingerprint %s", base64.StdEncoding.EncodeToString(sum[:]))

	ln, err := net.Listen("tcp", s.listen)
	if err != nil {
		return err
	}
	scheme := "http"
	if s.tlsCert != "" {
		scheme = "https"
	}
	log.Printf("server: Listening on %s://%s", scheme, ln.Addr())
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	if s.tlsCert != "" {
		return srv.ServeTLS(ln, s.tlsCert, s.tlsKey)
	}
	return srv.Serve(ln)
}

func hostKey(path string) (ssh.Signer, error) {
	if path != "" {
		if data, err := os.ReadFile(path); err == nil {
			return ssh.ParsePrivateKey(data)
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	if path != "" {
		der, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return nil, err
		}
		data := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return nil, err
		}
	}
	return ssh.NewSignerFromKey(key)
}

// Like a stock server: the 101 does not echo the subprotocol.
var upgrader = websocket.Upgrader{
	ReadBufferSize:  32 * 1024,
	WriteBufferSize: 32 * 1024,
	CheckOrigin:     func(*http.Request) bool { return true },
}

func (s *serverConfig) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	isTunnel := strings.EqualFold(r.Header.Get("Upgrade"), "websocket") &&
		r.Header.Get("Sec-WebSocket-Protocol") == "chisel-v3"
	if !isTunnel {
		log.Printf("server: plain %s %s (%s)", r.Method, r.URL.RequestURI(), r.UserAgent())
		http.Error(w, "Not found", http.StatusNotFound)
		return
	}
	id := atomic.AddInt64(&s.sessions, 1)
	log.Printf("server: session#%d: upgrade %s from %s (%s) token=%t",
		id, r.URL.RequestURI(), r.RemoteAddr, r.UserAgent(), r.Header.Get("Token") != "")
	if s.token != "" && r.Header.Get("Token") != s.token {
		http.Error(w, "token rejected", http.StatusUnauthorized)
		return
	}
	ws, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		log.Printf("server: session#%d: upgrade failed: %v", id, err)
		return
	}
	go s.serveTunnel(id, newWSConn(ws))
}

// tunnel is one connected client: its SSH connection and its listeners.
type tunnel struct {
	id       int64
	conn     *ssh.ServerConn
	mu       sync.Mutex
	closers  []io.Closer
	bindHost string
}

func (s *serverConfig) serveTunnel(id int64, conn net.Conn) {
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	sc, chans, reqs, err := ssh.NewServerConn(conn, s.sshConfig)
	if err != nil {
		log.Printf("server: session#%d: handshake failed: %v", id, err)
		return
	}
	conn.SetDeadline(time.Time{})
	log.Printf("server: session#%d: SSH up, client %s", id, sc.ClientVersion())
	t := &tunnel{id: id, conn: sc, bindHost: s.bindHost}
	defer t.closeListeners()
	go func() {
		for nc := range chans {
			nc.Reject(ssh.Prohibited, "a reverse server opens no client channels")
		}
	}()
	stopped := make(chan struct{})
	if s.keepalive > 0 {
		go keepalive(fmt.Sprintf("server: session#%d", id), sc, s.keepalive, 0, stopped)
	}
	go t.serveRequests(reqs)
	err = sc.Wait()
	close(stopped)
	log.Printf("server: session#%d: closed (%v)", id, err)
}

func (t *tunnel) serveRequests(reqs <-chan *ssh.Request) {
	configured := false
	for r := range reqs {
		switch {
		case r.Type == "ping":
			if logPongs {
				log.Printf("server: session#%d: ping received", t.id)
			}
			r.Reply(true, []byte("pong"))
		case r.Type == "config" && !configured:
			configured = true
			if err := t.configure(r.Payload); err != nil {
				log.Printf("server: session#%d: config refused: %v", t.id, err)
				r.Reply(false, []byte(err.Error()))
				continue
			}
			r.Reply(true, nil)
		default:
			log.Printf("server: session#%d: request %q refused (unknown)", t.id, r.Type)
			r.Reply(false, nil)
		}
	}
}

func (t *tunnel) configure(payload []byte) error {
	var msg configMsg
	if err := json.Unmarshal(payload, &msg); err != nil {
		return fmt.Errorf("invalid config: %v", err)
	}
	log.Printf("server: session#%d: config %s", t.id, payload)
	for _, r := range msg.Remotes {
		if !r.Reverse {
			return errors.New("only reverse remotes are served")
		}
		for field, value := range map[string]string{"LocalPort": r.LocalPort, "RemotePort": r.RemotePort} {
			if err := checkPort(field, value); err != nil {
				return err
			}
		}
		addr := net.JoinHostPort(t.bindHost, r.LocalPort)
		var err error
		if r.LocalProto == "udp" {
			err = t.listenUDP(addr, r)
		} else {
			err = t.listenTCP(addr, r)
		}
		if err != nil {
			t.closeListeners()
			return fmt.Errorf("Server cannot listen on R:%s=>%s: %v", r.LocalPort, r.target(), err)
		}
		log.Printf("server: session#%d: tunnel R:%s=>%s listening on %s", t.id, r.LocalPort, r.target(), addr)
	}
	return nil
}

func (t *tunnel) keep(c io.Closer) {
	t.mu.Lock()
	t.closers = append(t.closers, c)
	t.mu.Unlock()
}

func (t *tunnel) closeListeners() {
	t.mu.Lock()
	closers := t.closers
	t.closers = nil
	t.mu.Unlock()
	for _, c := range closers {
		c.Close()
	}
}

func (t *tunnel) listenTCP(addr string, r remote) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	t.keep(ln)
	go func() {
		for {
			app, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				ch, reqs, err := t.conn.OpenChannel("chisel", []byte(r.target()))
				if err != nil {
					log.Printf("server: session#%d: channel to %s refused: %v", t.id, r.target(), err)
					app.Close()
					return
				}
				go ssh.DiscardRequests(reqs)
				pipe(ch, app)
			}()
		}
	}()
	return nil
}

// listenUDP serves a /udp remote: one chisel channel per listener carries
// every source's datagrams as gob udpPacket values, opened at the first
// datagram and again after it closes.
func (t *tunnel) listenUDP(addr string, r remote) error {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return err
	}
	t.keep(pc)
	var mu sync.Mutex
	var current *gobChannel
	channel := func() (*gobChannel, error) {
		mu.Lock()
		defer mu.Unlock()
		if current != nil {
			return current, nil
		}
		ch, reqs, err := t.conn.OpenChannel("chisel", []byte(r.target()))
		if err != nil {
			return nil, err
		}
		go ssh.DiscardRequests(reqs)
		g := newGobChannel(ch)
		current = g
		go func() {
			for {
				p, err := g.recv()
				if err != nil {
					break
				}
				if to, err := net.ResolveUDPAddr("udp", p.Src); err == nil {
					pc.WriteTo(p.Payload, to)
				}
			}
			mu.Lock()
			if current == g {
				current = nil
			}
			mu.Unlock()
			ch.Close()
		}()
		return g, nil
	}
	go func() {
		buf := make([]byte, maxDatagram)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			g, err := channel()
			if err != nil {
				log.Printf("server: session#%d: udp channel to %s refused: %v", t.id, r.target(), err)
				continue
			}
			if g.send(udpPacket{Src: from.String(), Payload: buf[:n]}) != nil {
				g.ch.Close()
			}
		}
	}()
	return nil
}
