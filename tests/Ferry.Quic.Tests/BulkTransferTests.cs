using System.Diagnostics;
using System.Net;
using System.Security.Cryptography;

namespace Ferry.Quic.Tests;

/// <summary>Issue 4's volume proofs on loopback: 1 GiB on one stream, and 1000 streams open at once on one connection.</summary>
public sealed class BulkTransferTests : QuicTestBase
{
    private const int Chunk = 256 * 1024;
    private const int AverageSize = 40_000;

    [Fact]
    public async Task One_GiB_on_one_stream_arrives_intact()
    {
        const long Size = 1L << 30;
        var (client, server) = await ConnectToAsync(BindServer(new QuicConnectionOptions()));
        var data = new DeterministicData(seed: 1);
        var watch = Stopwatch.StartNew();

        await using var stream = await client.OpenBidirectionalStreamAsync(Ct).AsTask().WaitAsync(Timeout, Ct);
        var send = Task.Run(async () =>
        {
            using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            var buffer = new byte[Chunk];
            for (long position = 0; position < Size; position += Chunk)
            {
                data.Fill(buffer, position);
                hash.AppendData(buffer);
                await stream.WriteAsync(buffer, Ct).AsTask().WaitAsync(Timeout, Ct);
            }

            stream.CompleteWrites();
            return hash.GetHashAndReset();
        }, Ct);

        await using var accepted = await server.AcceptStreamAsync(Ct).AsTask().WaitAsync(Timeout, Ct);
        var receive = Task.Run(async () =>
        {
            using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            var buffer = new byte[Chunk];
            long total = 0;
            while (true)
            {
                int n = await accepted.ReadAsync(buffer, Ct).AsTask().WaitAsync(Timeout, Ct);
                if (n == 0)
                {
                    return (total, hash.GetHashAndReset());
                }

                hash.AppendData(buffer, 0, n);
                total += n;
            }
        }, Ct);

        var sentHash = await send.WaitAsync(TimeSpan.FromMinutes(5), Ct);
        var (received, receivedHash) = await receive.WaitAsync(Timeout, Ct);
        watch.Stop();

        Assert.Equal(Size, received);
        Assert.Equal(sentHash, receivedHash);
        var stats = client.GetStatistics();
        Report($"1 GiB on one stream: {watch.Elapsed.TotalSeconds:F1} s, {Size / watch.Elapsed.TotalSeconds / (1 << 20):F0} MiB/s; sender {stats}");
    }

    [Fact]
    public async Task A_thousand_concurrent_streams_on_one_connection_each_carry_their_own_bytes()
    {
        const int Streams = 1000;
        var (client, server) = await ConnectToAsync(BindServer(new QuicConnectionOptions { MaxInboundBidirectionalStreams = Streams }));
        var watch = Stopwatch.StartNew();

        // The server answers nothing until all 1000 streams have reached it, so all of them are open at the same time.
        var allArrived = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var serverSide = Task.Run(async () =>
        {
            var echoes = new List<Task>(Streams);
            var seen = new HashSet<int>();
            for (int i = 0; i < Streams; i++)
            {
                var s = await server.AcceptStreamAsync(Ct).AsTask().WaitAsync(Timeout, Ct);
                echoes.Add(Task.Run(async () =>
                {
                    await using (s)
                    {
                        var received = await HandshakeTests.ReadAllAsync(s).WaitAsync(Timeout, Ct);
                        int index = BitConverter.ToInt32(received);
                        Assert.Equal(Payload(index), received); // the server checks too, so a mix-up is caught on the way in
                        lock (seen)
                        {
                            Assert.True(seen.Add(index), $"stream payload {index} arrived twice");
                        }

                        await allArrived.Task.WaitAsync(Timeout, Ct);
                        await s.WriteAsync(received, completeWrites: true, Ct).AsTask().WaitAsync(Timeout, Ct);
                    }
                }, Ct));
            }

            allArrived.SetResult();
            await Task.WhenAll(echoes);
        }, Ct);

        var streams = new QuicStream[Streams];
        for (int i = 0; i < Streams; i++)
        {
            streams[i] = await client.OpenBidirectionalStreamAsync(Ct).AsTask().WaitAsync(Timeout, Ct);
        }

        var clients = streams.Select((s, i) => Task.Run(async () =>
        {
            await using (s)
            {
                var payload = Payload(i);
                await s.WriteAsync(payload, completeWrites: true, Ct).AsTask().WaitAsync(Timeout, Ct);
                var echoed = await HandshakeTests.ReadAllAsync(s).WaitAsync(Timeout, Ct);
                Assert.Equal(payload, echoed);
            }
        }, Ct)).ToArray();

        await Task.WhenAll(clients).WaitAsync(TimeSpan.FromMinutes(2), Ct);
        await serverSide.WaitAsync(Timeout, Ct);
        Report($"1000 concurrent streams, {Streams * (long)AverageSize / (1 << 20)} MiB each way: {watch.Elapsed.TotalSeconds:F1} s");
    }

    // Distinct length and content per stream; the first four bytes name the stream.
    private static byte[] Payload(int index)
    {
        var payload = new byte[(AverageSize / 2) + (index * 37 % AverageSize)];
        new Random(index).NextBytes(payload);
        BitConverter.TryWriteBytes(payload, index);
        return payload;
    }

    private QuicEndpoint BindServer(QuicConnectionOptions options) => Track(QuicEndpoint.Bind(new QuicEndpointOptions
    {
        LocalEndPoint = new IPEndPoint(IPAddress.Loopback, 0),
        ServerTls = new QuicTlsOptions { Certificate = Pki.Issue("server.ferry"), TrustedCa = Pki.Ca },
        ServerConnectionOptions = options,
    }));

    private async Task<(QuicConnection Client, QuicConnection Server)> ConnectToAsync(QuicEndpoint server)
    {
        var accept = server.AcceptConnectionAsync(Ct).AsTask();
        var client = Track(await Client.ConnectAsync(server.LocalEndPoint, ClientTls(), null, Ct).AsTask().WaitAsync(Timeout, Ct));
        return (client, Track(await accept.WaitAsync(Timeout, Ct)));
    }

    private static void Report(string line)
    {
        TestContext.Current.TestOutputHelper?.WriteLine(line);
        TestContext.Current.SendDiagnosticMessage(line);
    }
}
