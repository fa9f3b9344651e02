// The module of cairn's Go client: the generated stubs (gen/) and cairn-example.
// generate.sh reads the module path from here for the stubs' import path. No require
// lines: outside Debian's GOPATH layout, `go mod tidy` adds the newest
// google.golang.org/grpc and google.golang.org/protobuf and writes go.sum (see README.md).
module cairn/clients/go

go 1.19
