using System.Net;
using System.Security.Cryptography;

namespace Ferry.Quic.Tests;

/// <summary>Many connections at once through one server socket, to shake out races in demux and locking.</summary>
public sealed class LoadTests : QuicTestBase
{
    [Fact]
    public async Task Forty_connections_with_four_streams_each_all_echo_correctly()
    {
        const int Connections = 40;
        var clientEndpoints = Enumerable.Range(0, 4)
            .Select(_ => Track(QuicEndpoint.Bind(new QuicEndpointOptions { LocalEndPoint = new IPEndPoint(IPAddress.Loopback, 0) })))
            .ToArray();

        var serverSide = Task.Run(async () =>
        {
            var handlers = new List<Task>();
            for (int i = 0; i < Connections; i++)
            {
                var connection = Track(await Server.AcceptConnectionAsync(Ct));
                handlers.Add(Task.Run(async () =>
                {
                    var echoes = new List<Task>();
                    for (int s = 0; s < 4; s++)
                    {
                        var stream = await connection.AcceptStreamAsync(Ct);
                        echoes.Add(Task.Run(async () =>
                        {
                            await using (stream)
                            {
                                var data = await HandshakeTests.ReadAllAsync(stream);
                                await stream.WriteAsync(SHA256.HashData(data), completeWrites: true, Ct);
                            }
                        }, Ct));
                    }

                    await Task.WhenAll(echoes);
                }, Ct));
            }

            await Task.WhenAll(handlers);
        }, Ct);

        var clients = Enumerable.Range(0, Connections).Select(i => Task.Run(async () =>
        {
            var connection = Track(await clientEndpoints[i % clientEndpoints.Length].ConnectAsync(Server.LocalEndPoint, ClientTls($"client-{i}"), null, Ct));
            await Task.WhenAll(Enumerable.Range(0, 4).Select(async s =>
            {
                var payload = new byte[64 * 1024];
                new Random((i * 4) + s).NextBytes(payload);
                await using var stream = await connection.OpenBidirectionalStreamAsync(Ct);
                await stream.WriteAsync(payload, completeWrites: true, Ct);
                Assert.Equal(SHA256.HashData(payload), await HandshakeTests.ReadAllAsync(stream));
            }));
        }, Ct)).ToArray();

        await Task.WhenAll(clients).WaitAsync(TimeSpan.FromSeconds(60), Ct);
        await serverSide.WaitAsync(Timeout, Ct);
    }
}
