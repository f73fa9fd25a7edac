/** Format and header_page texts shared by the ftrace tests (64-bit x86 layout). */

export const COMMON = `	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;
`;

export const HEADER_PAGE_TEXT = `	field: u64 timestamp;	offset:0;	size:8;	signed:0;
	field: local_t commit;	offset:8;	size:8;	signed:1;
	field: int overwrite;	offset:8;	size:1;	signed:1;
	field: char data;	offset:16;	size:4080;	signed:0;
`;

export const TEST_FORMAT_TEXT = `name: everything
ID: 1001
format:
${COMMON}
	field:unsigned long __probe_ip;	offset:8;	size:8;	signed:0;
	field:s64 code;	offset:16;	size:8;	signed:1;
	field:__data_loc char[] comm;	offset:24;	size:4;	signed:1;
	field:s8 s8v;	offset:28;	size:1;	signed:1;
	field:u8 u8v;	offset:29;	size:1;	signed:0;
	field:short s16v;	offset:30;	size:2;	signed:1;
	field:int s32v;	offset:32;	size:4;	signed:1;
	field:unsigned int u32v;	offset:36;	size:4;	signed:0;
	field:char name[16];	offset:40;	size:16;	signed:0;
	field:__rel_loc char[] rel;	offset:56;	size:4;	signed:0;
	field:__data_loc u8[] blob;	offset:60;	size:4;	signed:0;
	field:unsigned long args[3];	offset:64;	size:24;	signed:0;
	field:u64 u64v;	offset:88;	size:8;	signed:0;

print fmt: "(%lx) code=%Ld comm=\\"%s\\"", REC->__probe_ip, REC->code, __get_str(comm)
`;

export const EXIT_FORMAT_TEXT = `name: exit
ID: 1500
format:
${COMMON}
	field:unsigned long __probe_ip;	offset:8;	size:8;	signed:0;
	field:s64 code;	offset:16;	size:8;	signed:1;
	field:__data_loc char[] comm;	offset:24;	size:4;	signed:1;

print fmt: "(%lx) code=%Ld comm=\\"%s\\"", REC->__probe_ip, REC->code, __get_str(comm)
`;
