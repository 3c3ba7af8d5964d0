package main

import (
	"io"
	"net"
	"sync"

	"golang.org/x/crypto/ssh"
)

// pipe joins a TCP connection and a chisel channel until both directions
// end. EOF is a half-close both ways (PROTOCOL.md section 5); an error on
// either side closes everything.
func pipe(ch ssh.Channel, conn net.Conn) {
	var wg sync.WaitGroup
	var once sync.Once
	closeAll := func() {
		once.Do(func() {
			ch.Close()
			conn.Close()
		})
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		if _, err := io.Copy(ch, conn); err != nil {
			closeAll()
			return
		}
		ch.CloseWrite()
	}()
	go func() {
		defer wg.Done()
		if _, err := io.Copy(conn, ch); err != nil {
			closeAll()
			return
		}
		if tcp, ok := conn.(*net.TCPConn); ok {
			tcp.CloseWrite()
		} else {
			closeAll()
		}
	}()
	wg.Wait()
	closeAll()
}
