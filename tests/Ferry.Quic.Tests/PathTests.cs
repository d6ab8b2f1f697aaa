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
        var (clientSide, serverSide) = CreateRelayPair();

        var accept = Server.AcceptConnectionAsync(Ct).AsTask();
        var client = Track(await Client.ConnectAsync(clientSide, ClientTls(), null, Ct).AsTask().WaitAsync(Timeout, Ct));
        var server = Track(await accept.WaitAsync(Timeout, Ct));
        Assert.Equal(clientSide.RemoteEndPoint, client.RemoteEndPoint);
        Assert.Equal(serverSide.RemoteEndPoint, server.RemoteEndPoint);
        Assert.Equal("client.ferry", server.RemoteIdentity);

        await (await StartTransferAsync(client, server, 4 << 20, null)).WaitAsync(Timeout, Ct);
    }

    /// <remarks>
    /// ngtcp2 acknowledges every second packet at once when each is followed by a flush, so datagrams handed over one by one
    /// draw an answer per pair; on the relayed path each answer is another frame through both TLS links and the relay.
    /// </remarks>
    [Fact]
    public async Task Datagrams_delivered_as_a_relay_batch_get_one_answer_instead_of_one_per_pair()
    {
        var held = new List<byte[]>();
        var hold = false;
        var (clientSide, serverSide) = CreateRelayPair(d =>
        {
            lock (held)
            {
                if (hold)
                {
                    held.Add(d.ToArray());
                }

                return hold;
            }
        });
        var accept = Server.AcceptConnectionAsync(Ct).AsTask();
        var client = Track(await Client.ConnectAsync(clientSide, ClientTls(), null, Ct).AsTask().WaitAsync(Timeout, Ct));
        var server = Track(await accept.WaitAsync(Timeout, Ct));
        var sent = RandomNumberGenerator.GetBytes(64 * 1024);
        await using var outbound = await client.OpenBidirectionalStreamAsync(Ct);
        await outbound.WriteAsync(sent.AsMemory(0, 1), Ct);
        await using var inbound = await server.AcceptStreamAsync(Ct).AsTask().WaitAsync(Timeout, Ct);
        var received = new byte[sent.Length];
        await inbound.ReadExactlyAsync(received.AsMemory(0, 1), Ct).AsTask().WaitAsync(Timeout, Ct);

        // The client's packets are held from here on, so each round hands the server exactly the datagrams chosen.
        lock (held)
        {
            hold = true;
        }

        var written = 1;
        async Task<byte[][]> HoldAsync(int count)
        {
            var waited = System.Diagnostics.Stopwatch.StartNew();
            while (true)
            {
                lock (held)
                {
                    if (held.Count >= count)
                    {
                        var taken = held.GetRange(0, count).ToArray();
                        held.RemoveRange(0, count);
                        return taken;
                    }
                }

                Assert.True(waited.Elapsed < Timeout, $"the client sent {held.Count} datagrams, not {count}");
                if (written < sent.Length)
                {
                    var chunk = Math.Min(4096, sent.Length - written);
                    await outbound.WriteAsync(sent.AsMemory(written, chunk), Ct);
                    written += chunk;
                }
                else
                {
                    await Task.Delay(5, Ct);
                }
            }
        }

        const int Round = 8;
        var one = await HoldAsync(Round);
        var before = server.GetStatistics().BytesSent;
        foreach (var datagram in one)
        {
            serverSide.Deliver(datagram);
        }

        var answeredOneByOne = server.GetStatistics().BytesSent - before;

        var batch = await HoldAsync(Round);
        before = server.GetStatistics().BytesSent;
        using (var delivery = Server.BeginRelayDelivery())
        {
            foreach (var datagram in batch)
            {
                delivery.Deliver(serverSide, datagram);
            }
        }

        var answeredAsBatch = server.GetStatistics().BytesSent - before;
        TestContext.Current.TestOutputHelper?.WriteLine($"{Round} datagrams one by one: {answeredOneByOne} bytes answered; as a batch: {answeredAsBatch}");
        Assert.True(answeredAsBatch > 0, "the batch was never answered");
        Assert.True(answeredAsBatch * 2 < answeredOneByOne, $"a batch of {Round} drew {answeredAsBatch} bytes of answers, one by one {answeredOneByOne}");

        // Nothing was lost on the way: the rest flows normally and every byte arrives intact.
        byte[][] rest;
        lock (held)
        {
            hold = false;
            rest = [.. held];
            held.Clear();
        }

        foreach (var datagram in rest)
        {
            serverSide.Deliver(datagram);
        }

        if (written < sent.Length)
        {
            await outbound.WriteAsync(sent.AsMemory(written), Ct);
        }

        await inbound.ReadExactlyAsync(received.AsMemory(1), Ct).AsTask().WaitAsync(Timeout, Ct);
        Assert.Equal(sent, received);
    }

    [Fact]
    public async Task Relayed_connection_upgrades_to_the_direct_path_mid_transfer()
    {
        // Ferry's usual order: start through the relay at once, move to UDP once hole punching has worked.
        var (clientSide, serverSide) = CreateRelayPair();
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
        var (clientSide, serverSide) = CreateRelayPair();

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

    /// <summary>
    /// A relay path on each endpoint, joined directly: what one sends, the other is handed at once, unless
    /// <paramref name="holdFromClient"/> takes a client datagram (returns true) to deliver it later itself.
    /// </summary>
    private (RelayQuicPath Client, RelayQuicPath Server) CreateRelayPair(Func<ReadOnlyMemory<byte>, bool>? holdFromClient = null)
    {
        RelayQuicPath? serverSide = null;
        var clientSide = Track(Client.CreateRelayPath((d, _) =>
        {
            if (holdFromClient?.Invoke(d) != true)
            {
                serverSide!.Deliver(d.Span);
            }

            return ValueTask.CompletedTask;
        }));
        serverSide = Track(Server.CreateRelayPath((d, _) =>
        {
            clientSide.Deliver(d.Span);
            return ValueTask.CompletedTask;
        }));
        return (clientSide, serverSide);
    }
}
