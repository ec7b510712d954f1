module relaybox.example/messages-api

go 1.22
