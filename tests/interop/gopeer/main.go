// Command gopeer is qanat's interop peer: a chisel-v3 client and server
// written for qanat's tests on Go's own SSH and WebSocket stacks
// (golang.org/x/crypto/ssh, github.com/gorilla/websocket), the libraries
// chisel and the OutSystems Cloud Connector are built on. It is written
// from the protocol facts in qanat's PROTOCOL.md, not from chisel's code.
//
//	gopeer client [flags] SERVER-URL REMOTE...   like `chisel client`
//	gopeer server [flags]                        like `chisel server --reverse`
//	gopeer gob                                   prints the UDP gob vectors
//
// Logs go to stderr, one event a line, with stable words the tests wait
// for ("client: Connected", "server: Listening on").
package main

import (
	"fmt"
	"log"
	"os"
)

func main() {
	log.SetFlags(log.Ldate | log.Ltime | log.Lmicroseconds)
	log.SetOutput(os.Stderr)
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "client":
		err = clientMain(os.Args[2:])
	case "server":
		err = serverMain(os.Args[2:])
	case "gob":
		err = gobMain(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		log.Printf("fatal: %v", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: gopeer client|server|gob [flags] ...")
	os.Exit(2)
}
