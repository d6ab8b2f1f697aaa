using System.Buffers;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Diagnosers;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Running;
using Ferry.Core.Flows;
using Ferry.Relay;
using Ferry.Stun;

namespace Ferry.Benchmarks;

/// <summary>BenchmarkDotNet micro-benchmarks of the codecs on the hot path: every flow, every relayed packet, every connectivity check.</summary>
internal static class Micro
{
    public const string Command = "micro";

    public static int Run(string[] args)
    {
        // A short job: these are nanosecond-scale codecs, and the point is allocations per operation and gross regressions.
        var config = ManualConfig.Create(DefaultConfig.Instance)
            .AddJob(Job.ShortRun)
            .AddDiagnoser(MemoryDiagnoser.Default)
            .WithOptions(ConfigOptions.DisableOptimizationsValidator)
            .WithArtifactsPath(Path.Combine(Directory.GetCurrentDirectory(), "artifacts", "bench", "micro"));
        var summaries = BenchmarkRunner.Run([typeof(FlowCodecBenchmarks), typeof(StunBenchmarks), typeof(RelayFrameBenchmarks)], config, args[1..]);
        return summaries.Any(s => s.HasCriticalValidationErrors || s.Reports.Any(r => !r.Success)) ? 1 : 0;
    }
}

/// <summary>The flow header every TCP and UDP flow starts with, and the UDP datagram framing.</summary>
[MemoryDiagnoser]
public class FlowCodecBenchmarks
{
    private readonly FlowHeader _header = new(FlowProtocol.Tcp, "postgres.corp.internal", 5432);
    private readonly byte[] _buffer = new byte[FlowHeader.MaxEncodedLength];
    private readonly byte[] _payload = new byte[1200];
    private readonly byte[] _datagram = new byte[1300];

    [Benchmark]
    public int FlowHeaderEncodeDecode()
    {
        var n = _header.Encode(_buffer);
        return FlowHeader.TryDecode(_buffer.AsSpan(0, n), out _, out var consumed, out _) ? consumed : -1;
    }

    [Benchmark]
    public int UdpDatagramEncodeDecode()
    {
        var n = UdpFlowFraming.EncodeDatagram(_datagram, UdpFlowFraming.QuarterStreamId(4_000), _payload);
        return UdpFlowFraming.TryDecodeDatagram(_datagram.AsSpan(0, n), out _, out var offset) ? offset : -1;
    }
}

/// <summary>An ICE connectivity check as sent and as checked: USERNAME, PRIORITY, ICE-CONTROLLING, MESSAGE-INTEGRITY, FINGERPRINT.</summary>
[MemoryDiagnoser]
public class StunBenchmarks
{
    private readonly byte[] _key = "a-peer-password-of-22-chars"u8.ToArray();
    private readonly byte[] _buffer = new byte[548];
    private byte[] _check = [];

    [GlobalSetup]
    public void Setup() => _check = Build().ToArray();

    [Benchmark]
    public int BuildCheck() => Build().Length;

    [Benchmark]
    public bool ParseAndVerifyCheck()
        => StunMessage.TryParse(_check, out var message, out _) && message.VerifyMessageIntegrity(_key);

    [Benchmark]
    public bool ClassifyDatagram() => StunPacket.IsStun(_check);

    private ReadOnlySpan<byte> Build()
    {
        var writer = new StunMessageWriter(_buffer, StunMessageType.BindingRequest, StunTransactionId.NewRandom());
        writer.AddUsername("Xb3k:9fQz");
        writer.AddPriority(0x6e0001ff);
        writer.AddIceControlling(0x0102030405060708);
        writer.AddMessageIntegrity(_key);
        writer.AddFingerprint();
        return writer.Written;
    }
}

/// <summary>A relayed QUIC packet as the relay link frames it and the relay server reads it.</summary>
[MemoryDiagnoser]
public class RelayFrameBenchmarks
{
    private readonly byte[] _packet = new byte[1252];
    private const string Ticket = "v1.cn_0123456789abcdef.dv_0123456789abcdef.1764900000.Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4";
    private readonly byte[] _frame = new byte[RelayFrameCodec.DataLength(1252)];
    private readonly byte[] _bind = new byte[RelayFrameCodec.BindLength(Ticket)];

    [Benchmark]
    public int WriteAndReadData()
    {
        RelayFrameCodec.WriteData(_frame, 7, _packet);
        var sequence = new ReadOnlySequence<byte>(_frame);
        if (RelayFrameCodec.TryRead(ref sequence, out var frame, out _) != RelayFrameStatus.Frame)
        {
            return -1;
        }
        return RelayFrameCodec.TryReadData(frame.Payload, out var channel, out var packet) ? channel + (int)packet.Length : -1;
    }

    [Benchmark]
    public int WriteAndReadBind()
    {
        RelayFrameCodec.WriteBind(_bind, 1, Ticket);
        var sequence = new ReadOnlySequence<byte>(_bind);
        return RelayFrameCodec.TryRead(ref sequence, out var read, out _) == RelayFrameStatus.Frame
            && RelayFrameCodec.TryReadBind(read.Payload, out var id, out _) ? (int)id : -1;
    }
}
