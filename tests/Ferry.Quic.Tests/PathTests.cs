using System.Net;
using System.Security.Cryptography;

namespace Ferry.Quic.Tests;

/// <summary>Paths: relay-carried virtual paths and migration of live connections without losing stream data.</summary>
public sealed class PathTests : QuicTestBase
{
    [Fact]
    public async Task Client_migrates_to_another_socket_mid_transfer()
    {
        var (client, server) = await ConnectAsync();
        var other = Track(QuicEndpoint.Bind(new QuicEndpointOptions { LocalEndPoint = new IPEndPoint(IPAddress.Loopback, 0) }));

        var transfer = await StartTransferAsync(client, server, 16 << 20, async written =>
        {
            if (written >= 4 << 20)
            {
                await client.MigrateAsync(other.CreatePath(Server.LocalEndPoint), cancellationToken: Ct).WaitAsync(Timeout, Ct);
                return true;
            }

            return false;
        });
        await transfer.WaitAsync(Timeout, Ct);

        Assert.Equal(other.LocalEndPoint, client.LocalEndPoint);
        Assert.Equal(other.LocalEndPoint, server.RemoteEndPoint);

        // The old socket is gone for good; the connection lives on.
        await Client.DisposeAsync().AsTask().WaitAsync(Timeout, Ct);
        await EchoAsync(client, server, 100_000);
    }

    [Fact]
    public async Task Connection_runs_over_a_relay_path()
    {
        RelayQuicPath? serverSide = null;
        var clientSide = Track(Client.CreateRelayPath((d, _) =>
        {
            serverSide!.Deliver(d.Span);
            return ValueTask.CompletedTask;
        }));
        serverSide = Track(Server.CreateRelayPath((d, _) =>
        {
            clientSide.Deliver(d.Span);
            return ValueTask.CompletedTask;
        }));

        var accept = Server.AcceptConnectionAsync(Ct).AsTask();
        var client = Track(await Client.ConnectAsync(clientSide, ClientTls(), null, Ct).AsTask().WaitAsync(Timeout, Ct));
        var server = Track(await accept.WaitAsync(Timeout, Ct));
        Assert.Equal(clientSide.RemoteEndPoint, client.RemoteEndPoint);
        Assert.Equal(serverSide.RemoteEndPoint, server.RemoteEndPoint);
        Assert.Equal("client.ferry", server.RemoteIdentity);

        await (await StartTransferAsync(client, server, 4 << 20, null)).WaitAsync(Timeout, Ct);
    }

    [Fact]
    public async Task Relayed_connection_upgrades_to_the_direct_path_mid_transfer()
    {
        // Ferry's usual order: start through the relay at once, move to UDP once hole punching has worked.
        RelayQuicPath? serverSide = null;
        var clientSide = Track(Client.CreateRelayPath((d, _) =>
        {
            serverSide!.Deliver(d.Span);
            return ValueTask.CompletedTask;
        }));
        serverSide = Track(Server.CreateRelayPath((d, _) =>
        {
            clientSide.Deliver(d.Span);
            return ValueTask.CompletedTask;
        }));
        var accept = Server.AcceptConnectionAsync(Ct).AsTask();
        var client = Track(await Client.ConnectAsync(clientSide, ClientTls(), null, Ct).AsTask().WaitAsync(Timeout, Ct));
        var server = Track(await accept.WaitAsync(Timeout, Ct));

        var transfer = await StartTransferAsync(client, server, 8 << 20, async written =>
        {
            if (written >= 2 << 20)
            {
                await client.MigrateAsync(Client.CreatePath(Server.LocalEndPoint), cancellationToken: Ct).WaitAsync(Timeout, Ct);
                return true;
            }

            return false;
        });
        await transfer.WaitAsync(Timeout, Ct);
        Assert.Equal(Server.LocalEndPoint, client.RemoteEndPoint);
        Assert.Equal(Client.LocalEndPoint, server.RemoteEndPoint);
    }

    [Fact]
    public async Task Migration_to_an_unreachable_path_fails_and_the_connection_stays()
    {
        var (client, server) = await ConnectAsync();
        var other = Track(QuicEndpoint.Bind(new QuicEndpointOptions { LocalEndPoint = new IPEndPoint(IPAddress.Loopback, 0) }));
        other.SendFilter = (_, _) => false; // nothing leaves the new socket: validation cannot succeed

        var ex = await Assert.ThrowsAsync<QuicException>(() => client.MigrateAsync(other.CreatePath(Server.LocalEndPoint), cancellationToken: Ct).WaitAsync(Timeout, Ct));
        TestContext.Current.TestOutputHelper?.WriteLine(ex.Message);
        Assert.Equal(Client.LocalEndPoint, client.LocalEndPoint);
        await EchoAsync(client, server, 100_000);
    }

    [Fact]
    public async Task Client_moves_from_a_dead_udp_path_to_a_relay_path_immediately()
    {
        var (client, server) = await ConnectAsync();
        RelayQuicPath? serverSide = null;
        var clientSide = Track(Client.CreateRelayPath((d, _) =>
        {
            serverSide!.Deliver(d.Span);
            return ValueTask.CompletedTask;
        }));
        serverSide = Track(Server.CreateRelayPath((d, _) =>
        {
            clientSide.Deliver(d.Span);
            return ValueTask.CompletedTask;
        }));

        var transfer = await StartTransferAsync(client, server, 8 << 20, async written =>
        {
            if (written >= 2 << 20)
            {
                // The direct path dies (both directions), as when a NAT binding vanishes.
                Client.SendFilter = (_, _) => false;
                Server.SendFilter = (_, _) => false;
                await client.MigrateAsync(clientSide, immediate: true, Ct).WaitAsync(Timeout, Ct);
                return true;
            }

            return false;
        });
        await transfer.WaitAsync(Timeout, Ct);
        Assert.Equal(clientSide.RemoteEndPoint, client.RemoteEndPoint);
        Assert.Equal(serverSide.RemoteEndPoint, server.RemoteEndPoint);
        Client.SendFilter = null;
        Server.SendFilter = null;
    }

    /// <summary>Sends size bytes client→server on one stream; the server answers with the SHA-256 it saw.</summary>
    private static async Task<Task> StartTransferAsync(QuicConnection client, QuicConnection server, int size, Func<long, Task<bool>>? onProgress)
    {
        var payload = new byte[size];
        new Random(size).NextBytes(payload);
        var stream = await client.OpenBidirectionalStreamAsync(Ct).AsTask().WaitAsync(Timeout, Ct);
        var receiver = Task.Run(async () =>
        {
            await using var s = await server.AcceptStreamAsync(Ct);
            var data = await HandshakeTests.ReadAllAsync(s);
            await s.WriteAsync(SHA256.HashData(data), completeWrites: true, Ct);
        }, Ct);

        return Task.Run(async () =>
        {
            await using (stream)
            {
                bool done = onProgress is null;
                for (int offset = 0; offset < size; offset += 64 * 1024)
                {
                    await stream.WriteAsync(payload.AsMemory(offset, Math.Min(64 * 1024, size - offset)), Ct);
                    if (!done)
                    {
                        done = await onProgress!(offset);
                    }
                }

                stream.CompleteWrites();
                Assert.Equal(SHA256.HashData(payload), await HandshakeTests.ReadAllAsync(stream));
                await receiver;
            }
        }, Ct);
    }

    private static async Task EchoAsync(QuicConnection client, QuicConnection server, int size)
    {
        await (await StartTransferAsync(client, server, size, null)).WaitAsync(Timeout, Ct);
    }
}
