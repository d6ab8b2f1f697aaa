using System.Buffers;

namespace Ferry.Relay.Tests.Support;

/// <summary>Builds multi-segment sequences, as a PipeReader hands them over, to test parsing across segment boundaries.</summary>
internal static class Segments
{
    public static ReadOnlySequence<byte> Split(byte[] bytes, Random random, int maxSegment)
    {
        if (bytes.Length == 0)
        {
            return ReadOnlySequence<byte>.Empty;
        }

        Segment? first = null;
        Segment? last = null;
        var at = 0;
        while (at < bytes.Length)
        {
            var length = Math.Min(bytes.Length - at, random.Next(1, maxSegment + 1));
            var segment = new Segment(bytes.AsMemory(at, length));
            if (last is null)
            {
                first = segment;
            }
            else
            {
                last.Append(segment);
            }

            last = segment;
            at += length;
        }

        return new ReadOnlySequence<byte>(first!, 0, last!, last!.Memory.Length);
    }

    private sealed class Segment : ReadOnlySequenceSegment<byte>
    {
        public Segment(ReadOnlyMemory<byte> memory) => Memory = memory;

        public void Append(Segment next)
        {
            next.RunningIndex = RunningIndex + Memory.Length;
            Next = next;
        }
    }
}
