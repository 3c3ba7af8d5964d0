package main

import (
	"bufio"
	"encoding/gob"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// udpPacket is what a UDP chisel channel carries, one gob value per
// datagram (PROTOCOL.md section 5). The type's name is part of the gob
// stream, so it must be exactly "udpPacket".
type udpPacket struct {
	Src     string
	Payload []byte
}

// maxDatagram is the largest UDP payload a chisel listener handles.
const maxDatagram = 9012

// gobChannel is one UDP channel: a gob encoder and decoder on it, writes
// serialised (several flows answer at once).
type gobChannel struct {
	ch  ssh.Channel
	dec *gob.Decoder
	mu  sync.Mutex
	enc *gob.Encoder
}

func newGobChannel(ch ssh.Channel) *gobChannel {
	return &gobChannel{ch: ch, dec: gob.NewDecoder(ch), enc: gob.NewEncoder(ch)}
}

func (g *gobChannel) send(p udpPacket) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.enc.Encode(p)
}

func (g *gobChannel) recv() (udpPacket, error) {
	var p udpPacket
	err := g.dec.Decode(&p)
	return p, err
}

// serveUDPChannel is the client side of a "/udp" channel: one UDP socket
// toward target per source address, answers sent back under that source.
func serveUDPChannel(ch ssh.Channel, target string, idle time.Duration) {
	g := newGobChannel(ch)
	var mu sync.Mutex
	flows := map[string]*net.UDPConn{}
	defer func() {
		mu.Lock()
		for _, c := range flows {
			c.Close()
		}
		mu.Unlock()
		ch.Close()
	}()
	for {
		p, err := g.recv()
		if err != nil {
			if err != io.EOF {
				log.Printf("client: udp channel %s: %v", target, err)
			}
			return
		}
		mu.Lock()
		conn := flows[p.Src]
		if conn == nil {
			addr, err := net.ResolveUDPAddr("udp", target)
			if err == nil {
				conn, err = net.DialUDP("udp", nil, addr)
			}
			if err != nil {
				mu.Unlock()
				log.Printf("client: udp dial %s: %v", target, err)
				continue
			}
			flows[p.Src] = conn
			go func(src string, conn *net.UDPConn) {
				buf := make([]byte, maxDatagram)
				for {
					conn.SetReadDeadline(time.Now().Add(idle))
					n, err := conn.Read(buf)
					if err != nil {
						break
					}
					if g.send(udpPacket{Src: src, Payload: buf[:n]}) != nil {
						break
					}
				}
				mu.Lock()
				if flows[src] == conn {
					delete(flows, src)
				}
				mu.Unlock()
				conn.Close()
			}(p.Src, conn)
		}
		mu.Unlock()
		conn.Write(p.Payload)
	}
}

// gobMain is a codec check with Go's own encoder: "gob encode" turns JSON
// lines ({"Src":..,"Payload":base64}) on stdin into a gob stream on stdout,
// "gob decode" does the reverse.
func gobMain(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: gopeer gob encode|decode")
	}
	switch args[0] {
	case "encode":
		enc := gob.NewEncoder(os.Stdout)
		scanner := bufio.NewScanner(os.Stdin)
		scanner.Buffer(make([]byte, 1<<20), 1<<20)
		for scanner.Scan() {
			var p udpPacket
			if err := json.Unmarshal(scanner.Bytes(), &p); err != nil {
				return err
			}
			if err := enc.Encode(p); err != nil {
				return err
			}
		}
		return scanner.Err()
	case "decode":
		dec := gob.NewDecoder(os.Stdin)
		out := json.NewEncoder(os.Stdout)
		for {
			var p udpPacket
			if err := dec.Decode(&p); err == io.EOF {
				return nil
			} else if err != nil {
				return err
			}
			if err := out.Encode(p); err != nil {
				return err
			}
		}
	}
	return fmt.Errorf("gob: want encode or decode, not %q", args[0])
}
